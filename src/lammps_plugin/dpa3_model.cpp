/* ----------------------------------------------------------------------
   Dpa3Model: loads a frozen DPA3 model and calls its forward_lower
   (contract: docs/internals.md).  The only file of the plugin that includes torch.
------------------------------------------------------------------------- */

#include "dpa3_model.h"

#include "comm_keys.h"    // src/ops/exchange: the comm_dict keys, shared with the op library
#include "dpa3_neighbor.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

using namespace LAMMPS_NS;

namespace {

constexpr const char *OP_NAME = "dpa3::border_exchange";
constexpr const char *MODE_OP_NAME = "dpa3::exchange_mode";

// Getters the plugin relies on, besides forward_lower (docs/internals.md).
const char *const REQUIRED_METHODS[] = {"get_rcut", "get_type_map", "get_num_layers",
                                        "get_exchange_width"};

std::string first_lines(const std::string &msg, int nmax = 3)
{
  std::istringstream in(msg);
  std::string line, out;
  int n = 0;
  while (n < nmax && std::getline(in, line)) {
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (!out.empty()) out += " | ";
    out += line;
    n++;
  }
  return out;
}

std::string what(const std::exception &e)
{
  if (auto ce = dynamic_cast<const c10::Error *>(&e))
    return first_lines(ce->what_without_backtrace());
  return first_lines(e.what());
}

bool ops_registered() { return c10::Dispatcher::singleton().findSchema({OP_NAME, ""}).has_value(); }

std::string own_directory()
{
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&ops_registered), &info) && info.dli_fname) {
    std::string self(info.dli_fname);
    auto pos = self.rfind('/');
    if (pos != std::string::npos) return self.substr(0, pos);
  }
  return ".";
}

// Registers the ops unless some library already did (Python's dpa3._ops in the same process,
// or an earlier plugin instance): next to the plugin when installed, else where the build
// put it.  Never loads a second copy: a second TORCH_LIBRARY(dpa3) would abort the process.
void ensure_ops_loaded()
{
  if (ops_registered()) return;
  std::vector<std::string> candidates{own_directory() + "/libdpa3_ops.so"};
#ifdef DPA3_OPS_LIBRARY
  candidates.emplace_back(DPA3_OPS_LIBRARY);
#endif
  candidates.emplace_back("libdpa3_ops.so");
  std::string errors;
  for (const auto &path : candidates) {
    void *handle = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle && ops_registered()) return;
    if (!handle) {
      const char *err = dlerror();
      errors += std::string("; ") + (err ? err : path);
    }
  }
  throw std::runtime_error("the dpa3 op library libdpa3_ops.so (which registers " +
                           std::string(OP_NAME) + ") could not be loaded" + errors);
}

at::Tensor get_output(const c10::Dict<c10::IValue, c10::IValue> &dict, const std::string &key)
{
  auto it = dict.find(c10::IValue(key));
  if (it == dict.end() || !it->value().isTensor())
    throw std::runtime_error("forward_lower returned no tensor '" + key + "'");
  return it->value().toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
}

void check_numel(const at::Tensor &t, int64_t expect, const std::string &key,
                 const std::string &shape)
{
  if (t.numel() != expect) {
    std::ostringstream msg;
    msg << "forward_lower returned '" << key << "' with shape " << t.sizes() << ", expected "
        << shape;
    throw std::runtime_error(msg.str());
  }
}

}    // namespace

struct Dpa3Model::Impl {
  torch::jit::Module module;
  torch::Device device{torch::kCPU};
  double rcut = 0.0;
  std::vector<std::string> type_map;
  int num_layers = 0;
  int exchange_width = 0;
  std::string metadata;

  // prepare_graph / forward_prepared / get_graph_spec (a committee shares the step graph)
  bool has_prepared = false;
  std::vector<double> graph_spec;

  // the inputs and the neighbour graph of one step (compute with keep_graph)
  struct Step {
    at::Tensor x, t;      // [1, nall, 3] float64 and [1, nall] int64 on the device
    c10::IValue graph;    // prepare_graph's Dict[str, Tensor]
    std::vector<double> spec;
    const Impl *owner = nullptr;    // the model that kept it
    bool valid = false;
  };

  // per re-neighbouring state, shared by the models of a committee (share_graph), and the
  // graph of the current step that the first model keeps for the others
  struct Graph {
    c10::Dict<std::string, at::Tensor> comm_dict;
    at::Tensor nlist;
    int nloc = 0;
    Step step;
  };
  std::shared_ptr<Graph> graph;

  void read_outputs(const c10::IValue &ret, int64_t nall, bool atomic_virial,
                    Dpa3Result &out) const;
};

Dpa3Model::Dpa3Model(const std::string &path, const std::string &device, int device_rank) :
    impl(std::make_unique<Impl>())
{
  ensure_ops_loaded();

  if (device == "cuda") {
    const auto ndev = static_cast<int>(torch::cuda::device_count());
    if (ndev == 0) throw std::runtime_error("device cuda requested, but no CUDA device is visible");
    impl->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device_rank % ndev));
  } else if (device != "cpu") {
    throw std::runtime_error("unknown device '" + device + "' (use cpu or cuda)");
  }

  // The profiling graph executor re-profiles and re-optimises when shapes change (nall
  // and nnei change at every re-neighbouring) and made no step faster on the CPU; run the
  // scripted graphs as they are.  (Process-wide torch setting.)
  torch::jit::setGraphExecutorOptimize(false);

  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe.good()) throw std::runtime_error("cannot open model file '" + path + "'");
  }
  if (std::filesystem::is_directory(path))
    throw std::runtime_error("model file '" + path + "' is a directory");

  torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
  try {
    impl->module = torch::jit::load(path, impl->device, extra);
  } catch (const std::exception &e) {
    const std::string msg = what(e);
    // a model frozen by DeePMD-kit (`dp --pt freeze`): it calls DeePMD-kit's own ops
    if (msg.find("deepmd::") != std::string::npos)
      throw std::runtime_error(
          "'" + path +
          "' is a DeePMD-kit frozen model, not a dpa3 one; convert it once with 'dpa3 "
          "convert-deepmd " +
          path +
          " model.ckpt.pt && dpa3 freeze -c model.ckpt.pt -o model-dpa3.pth' and use "
          "model-dpa3.pth (or run it with DeePMD-kit's pair_style deepmd)");
    // a torch.save zip (a training checkpoint) has no TorchScript constants.pkl
    if (msg.find("constants.pkl") != std::string::npos)
      throw std::runtime_error("'" + path +
                               "' is not a frozen model but a torch.save file (a training "
                               "checkpoint?); freeze it with 'dpa3 freeze -c " +
                               path + " -o model.pth' and give pair_style dpa3 model.pth");
    // a model frozen by another dpa3 version whose ops had different signatures
    const bool schema = msg.find("dpa3::") != std::string::npos &&
        (msg.find("Expected a value of type") != std::string::npos ||
         msg.find("Unknown builtin op") != std::string::npos ||
         msg.find("Arguments for call are not valid") != std::string::npos);
    if (schema)
      throw std::runtime_error("cannot load '" + path +
                               "': it calls dpa3 ops with signatures this dpa3 does not have, "
                               "so it was frozen by another dpa3 version; re-freeze it with "
                               "this version ('dpa3 freeze -c CHECKPOINT -o model.pth'): " +
                               msg);
    throw std::runtime_error("cannot load '" + path +
                             "' as a TorchScript model (corrupt file, or not frozen with "
                             "dpa3.export.freeze): " +
                             msg);
  }
  impl->module.eval();
  // loaded (DeePMD-kit's op library is in this process) but a DeePMD-kit model
  if (extra["metadata.json"].empty() && impl->module.find_method("get_model_def_script"))
    throw std::runtime_error("'" + path +
                             "' is a DeePMD-kit frozen model, not a dpa3 one; convert it "
                             "with 'dpa3 convert-deepmd " +
                             path + " model.ckpt.pt' and freeze that with 'dpa3 freeze'");

  const std::string hint = " (is it a DPA3 model frozen with dpa3.export.freeze?)";
  auto forward_lower = impl->module.find_method("forward_lower");
  if (!forward_lower)
    throw std::runtime_error("model '" + path + "' has no method forward_lower" + hint);
  for (const char *name : REQUIRED_METHODS)
    if (!impl->module.find_method(name))
      throw std::runtime_error("model '" + path + "' has no method " + name + hint);
  bool has_comm = false, has_virial_flag = false;
  for (const auto &arg : forward_lower->function().getSchema().arguments()) {
    if (arg.name() == "comm_dict") has_comm = true;
    if (arg.name() == "do_atomic_virial") has_virial_flag = true;
  }
  if (!has_comm || !has_virial_flag)
    throw std::runtime_error("forward_lower of '" + path +
                             "' lacks the comm_dict / do_atomic_virial arguments" + hint);

  impl->metadata = extra["metadata.json"];
  if (impl->metadata.empty())
    throw std::runtime_error("model '" + path + "' has no metadata.json" + hint);

  try {
    impl->rcut = impl->module.run_method("get_rcut").toDouble();
    for (const auto &v : impl->module.run_method("get_type_map").toList())
      impl->type_map.push_back(v.get().toStringRef());
    impl->num_layers = static_cast<int>(impl->module.run_method("get_num_layers").toInt());
    impl->exchange_width = static_cast<int>(impl->module.run_method("get_exchange_width").toInt());
  } catch (const std::exception &e) {
    throw std::runtime_error("model '" + path + "': calling its getters failed: " + what(e));
  }
  // optional (models frozen before them evaluate with forward_lower only)
  impl->has_prepared = impl->module.find_method("prepare_graph") &&
      impl->module.find_method("forward_prepared") && impl->module.find_method("get_graph_spec");
  if (impl->has_prepared) {
    try {
      impl->graph_spec = impl->module.run_method("get_graph_spec").toDoubleVector();
    } catch (const std::exception &e) {
      throw std::runtime_error("model '" + path + "': calling get_graph_spec failed: " + what(e));
    }
  }
  if (!(impl->rcut > 0.0)) throw std::runtime_error("model '" + path + "' has rcut <= 0");
  if (impl->type_map.empty())
    throw std::runtime_error("model '" + path + "' has an empty type map");
}

Dpa3Model::~Dpa3Model() = default;

double Dpa3Model::rcut() const { return impl->rcut; }
const std::vector<double> &Dpa3Model::graph_spec() const { return impl->graph_spec; }
const std::vector<std::string> &Dpa3Model::type_map() const { return impl->type_map; }
int Dpa3Model::num_layers() const { return impl->num_layers; }
int Dpa3Model::exchange_width() const { return impl->exchange_width; }
const std::string &Dpa3Model::metadata_json() const { return impl->metadata; }
std::string Dpa3Model::device_name() const { return impl->device.str(); }

void Dpa3Model::set_num_threads(int n)
{
  if (n > 0) at::set_num_threads(n);
}

int Dpa3Model::cuda_device_count() { return static_cast<int>(torch::cuda::device_count()); }

std::string Dpa3Model::exchange_mode(int64_t comm) const
{
  try {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow(MODE_OP_NAME, "");
    torch::jit::Stack stack{torch::full({1}, comm, torch::TensorOptions().dtype(torch::kInt64)),
                            impl->device};
    op.callBoxed(&stack);
    return stack.at(0).toStringRef();
  } catch (const std::exception &e) {
    throw std::runtime_error(std::string(MODE_OP_NAME) + " failed: " + what(e));
  }
}

void Dpa3Model::set_graph(const Dpa3Schedule &sched, const std::vector<int64_t> &nlist, int nloc,
                          int nnei, int64_t comm, int rank)
{
  const int64_t nswap = sched.nswap();
  const auto i32 = torch::TensorOptions().dtype(torch::kInt32);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  // from_blob(...).clone(): the tensors must own their memory, they outlive the vectors
  auto wrap32 = [&](const std::vector<int32_t> &v) {
    return torch::from_blob(const_cast<int32_t *>(v.data()), {(int64_t) v.size()}, i32).clone();
  };
  using dpa3::comm_key;
  at::Tensor t[dpa3::NUM_COMM_KEYS];
  t[comm_key("send_idx")] = wrap32(sched.send_idx).to(impl->device);
  auto *off = const_cast<int64_t *>(sched.send_off.data());
  t[comm_key("send_off")] = torch::from_blob(off, {nswap + 1}, i64).clone();
  t[comm_key("send_num")] = wrap32(sched.send_num);
  t[comm_key("recv_num")] = wrap32(sched.recv_num);
  t[comm_key("send_proc")] = wrap32(sched.send_proc);
  t[comm_key("recv_proc")] = wrap32(sched.recv_proc);
  t[comm_key("comm")] = torch::full({1}, comm, i64);
  t[comm_key("rank")] = torch::full({1}, rank, i32);
  // every key, in COMM_KEYS order (the model looks them up by name)
  auto g = std::make_shared<Impl::Graph>();
  for (int k = 0; k < dpa3::NUM_COMM_KEYS; ++k)
    g->comm_dict.insert(std::string(dpa3::COMM_KEYS[k]), t[k]);
  g->nlist = torch::from_blob(const_cast<int64_t *>(nlist.data()), {1, nloc, nnei}, i64)
                 .clone()
                 .to(impl->device);
  g->nloc = nloc;
  impl->graph = std::move(g);
}

void Dpa3Model::share_graph(const Dpa3Model &other)
{
  if (!other.impl->graph) throw std::runtime_error("share_graph: the other model has no graph");
  if (other.impl->device != impl->device)
    throw std::runtime_error("share_graph: the models are on different devices (" +
                             other.impl->device.str() + ", " + impl->device.str() + ")");
  impl->graph = other.impl->graph;
}

namespace {

std::string join(const std::vector<double> &v)
{
  std::ostringstream out;
  out << "[";
  for (size_t k = 0; k < v.size(); k++) out << (k ? ", " : "") << v[k];
  out << "]";
  return out.str();
}

}    // namespace

bool Dpa3Model::graph_compatible(const Dpa3Model &other, std::string &why) const
{
  if (!impl->has_prepared || !other.impl->has_prepared) {
    why = "frozen without prepare_graph/forward_prepared (re-freeze it with this dpa3 to share "
          "the graph)";
    return false;
  }
  if (impl->graph_spec != other.impl->graph_spec) {
    why = "its graph spec (get_graph_spec: cutoffs, sel, precision, smoothing, graph format) " +
        join(impl->graph_spec) + " differs from " + join(other.impl->graph_spec);
    return false;
  }
  return true;
}

void Dpa3Model::Impl::read_outputs(const c10::IValue &ret, int64_t nall, bool atomic_virial,
                                   Dpa3Result &out) const
{
  const int64_t nloc = graph->nloc;
  if (!ret.isGenericDict()) throw std::runtime_error("forward_lower did not return a dict");
  auto dict = ret.toGenericDict();

  at::Tensor energy = get_output(dict, "energy");
  check_numel(energy, 1, "energy", "[1, 1]");
  out.energy = energy.item<double>();

  at::Tensor virial = get_output(dict, "virial");
  check_numel(virial, 9, "virial", "[1, 9]");
  std::copy(virial.data_ptr<double>(), virial.data_ptr<double>() + 9, out.virial);

  at::Tensor force = get_output(dict, "extended_force");
  check_numel(force, nall * 3, "extended_force", "[1, nall, 3]");
  out.force.assign(force.data_ptr<double>(), force.data_ptr<double>() + nall * 3);

  at::Tensor ae = get_output(dict, "atom_energy");
  check_numel(ae, nloc, "atom_energy", "[1, nloc, 1]");
  out.atom_energy.assign(ae.data_ptr<double>(), ae.data_ptr<double>() + nloc);

  if (atomic_virial) {
    at::Tensor av = get_output(dict, "extended_virial");
    check_numel(av, nall * 9, "extended_virial", "[1, nall, 9]");
    out.atom_virial.assign(av.data_ptr<double>(), av.data_ptr<double>() + nall * 9);
  } else {
    out.atom_virial.clear();
  }
}

void Dpa3Model::compute(const std::vector<double> &coord, const std::vector<int64_t> &atype,
                        bool atomic_virial, Dpa3Result &out, bool keep_graph)
{
  const auto nall = static_cast<int64_t>(atype.size());
  if (!impl->graph) throw std::runtime_error("compute before set_graph");
  Impl::Graph &graph = *impl->graph;
  // a new step of the model that keeps the graph; a committee model that builds its own
  // graph (compute without keep_graph) leaves the kept one alone
  if (graph.step.owner == impl.get()) graph.step.valid = false;
  try {
    // kernels that the model launches without an explicit device go to the model's GPU
    c10::DeviceGuard guard(impl->device);
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    at::Tensor x = torch::from_blob(const_cast<double *>(coord.data()), {1, nall, 3}, f64)
                       .clone()
                       .to(impl->device);
    at::Tensor t = torch::from_blob(const_cast<int64_t *>(atype.data()), {1, nall}, i64)
                       .clone()
                       .to(impl->device);
    torch::jit::Kwargs kwargs{{"do_atomic_virial", c10::IValue(atomic_virial)},
                              {"comm_dict", c10::IValue(graph.comm_dict)}};
    c10::IValue ret;
    if (keep_graph && impl->has_prepared) {
      // the graph is kept for the committee (compute_shared): built once per step
      std::vector<c10::IValue> gargs{x, graph.nlist, c10::IValue(), c10::IValue(graph.comm_dict)};
      c10::IValue g = impl->module.get_method("prepare_graph")(gargs);
      ret = impl->module.get_method("forward_prepared")({x, t, g}, kwargs);
      graph.step.x = x;
      graph.step.t = t;
      graph.step.graph = g;
      graph.step.spec = impl->graph_spec;
      graph.step.owner = impl.get();
      graph.step.valid = true;
    } else {
      ret = impl->module.get_method("forward_lower")({x, t, graph.nlist, c10::IValue()}, kwargs);
    }
    impl->read_outputs(ret, nall, atomic_virial, out);
  } catch (const std::runtime_error &) {
    throw;
  } catch (const std::exception &e) {
    throw std::runtime_error("model evaluation failed: " + what(e));
  }
}

void Dpa3Model::compute_shared(Dpa3Result &out)
{
  if (!impl->graph || !impl->graph->step.valid)
    throw std::runtime_error("compute_shared without a graph kept by the first model");
  const Impl::Step &step = impl->graph->step;
  if (!impl->has_prepared || step.spec != impl->graph_spec)
    throw std::runtime_error("compute_shared on a graph of another spec (" + join(step.spec) +
                             ", this model: " + join(impl->graph_spec) + ")");
  try {
    c10::DeviceGuard guard(impl->device);
    torch::jit::Kwargs kwargs{{"do_atomic_virial", c10::IValue(false)},
                              {"comm_dict", c10::IValue(impl->graph->comm_dict)}};
    c10::IValue ret =
        impl->module.get_method("forward_prepared")({step.x, step.t, step.graph}, kwargs);
    impl->read_outputs(ret, step.t.size(1), false, out);
  } catch (const std::runtime_error &) {
    throw;
  } catch (const std::exception &e) {
    throw std::runtime_error("model evaluation failed: " + what(e));
  }
}

void Dpa3Model::release_step()
{
  if (!impl->graph) return;
  Impl::Step &step = impl->graph->step;
  if (step.owner != impl.get()) return;
  step = Impl::Step();
}

std::vector<double> Dpa3Model::exchange(const std::vector<double> &g, int nall, int width)
{
  try {
    torch::NoGradGuard no_grad;
    c10::DeviceGuard guard(impl->device);
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    at::Tensor x = torch::from_blob(const_cast<double *>(g.data()), {nall, width}, f64)
                       .clone()
                       .to(impl->device);
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow(OP_NAME, "");
    // the op's arguments: g, then the schedule in COMM_KEYS order
    torch::jit::Stack stack{x};
    if (!impl->graph) throw std::runtime_error("exchange before set_graph");
    for (const auto key : dpa3::COMM_KEYS)
      stack.emplace_back(impl->graph->comm_dict.at(std::string(key)));
    op.callBoxed(&stack);
    at::Tensor y = stack.at(0).toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
    return {y.data_ptr<double>(), y.data_ptr<double>() + y.numel()};
  } catch (const std::exception &e) {
    throw std::runtime_error("exchange check through " + std::string(OP_NAME) +
                             " failed: " + what(e));
  }
}
