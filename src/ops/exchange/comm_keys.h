/* -*- c++ -*- ----------------------------------------------------------
   dpa3: the keys of the comm_dict, the exchange schedule that the frozen
   model's forward_lower receives, in the positional order of the
   schedule arguments of dpa3::border_exchange after g.

   The one C++ definition: the op library (register_exchange.cpp, which
   also registers dpa3::comm_keys() -> str[] returning this list) and the
   LAMMPS plugin (dpa3_model.cpp, which builds the dict) both use it. The
   Python definition is dpa3.model.exchange.COMM_KEYS;
   tests/python/test_ops.py checks that the two agree, order included.
   Header only, no torch: the plugin includes it.
------------------------------------------------------------------------- */

#ifndef DPA3_COMM_KEYS_H
#define DPA3_COMM_KEYS_H

#include <array>
#include <string_view>

namespace dpa3 {

inline constexpr int NUM_COMM_KEYS = 8;

inline constexpr std::array<std::string_view, NUM_COMM_KEYS> COMM_KEYS{
    "send_idx",     // (sum(send_num),) int32, feature device: send lists in swap order
    "send_off",     // (nswap + 1,) int64, CPU: prefix offsets into send_idx
    "send_num",     // (nswap,) int32, CPU: rows sent per swap
    "recv_num",     // (nswap,) int32, CPU: rows received per swap
    "send_proc",    // (nswap,) int32, CPU: rank sent to (== rank for a self swap)
    "recv_proc",    // (nswap,) int32, CPU: rank received from (== rank for a self swap)
    "comm",         // (1,) int64, CPU: MPI_Comm_c2f handle, 0 = no MPI
    "rank",         // (1,) int32, CPU: this rank
};

// Position of `key` in COMM_KEYS, at compile time: a name that is not a key does not compile.
consteval int comm_key(std::string_view key)
{
  for (int k = 0; k < NUM_COMM_KEYS; ++k)
    if (COMM_KEYS[k] == key) return k;
  throw "dpa3::comm_key: not a comm_dict key";
}

}    // namespace dpa3

#endif
