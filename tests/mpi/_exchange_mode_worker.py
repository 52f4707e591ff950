"""MPI worker for test_ops_mpi.py: ``mpirun -np 2 python _exchange_mode_worker.py LEVEL``.

Initialises MPI with thread level LEVEL (single, funneled, serialized, multiple) and prints, for
every rank, the level MPI provided and what ``dpa3::exchange_mode`` answers for CPU and CUDA
features (the answer needs no GPU: it is the decision the exchange op takes). Then exchanges one
row with the other rank on the CPU, forward and backward, under that thread level.
"""

from __future__ import annotations

import os
import sys
import traceback

import mpi4py

mpi4py.rc.thread_level = sys.argv[1]  # must precede the import of mpi4py.MPI (MPI_Init_thread)

import torch
from mpi4py import MPI

from dpa3 import _ops

WORLD = MPI.COMM_WORLD
ME = WORLD.Get_rank()
LEVELS = {
    MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE",
    MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED",
    MPI.THREAD_SERIALIZED: "MPI_THREAD_SERIALIZED",
    MPI.THREAD_MULTIPLE: "MPI_THREAD_MULTIPLE",
}


def exchange_with_peer(handle: int) -> None:
    """Two owned rows per rank; one swap sends row 1 to the other rank, which stores it as its
    ghost row 2. Backward: the ghost's gradient returns to row 1 of its owner."""
    peer = 1 - ME
    i32 = torch.int32
    cd = [
        torch.tensor([1], dtype=i32),  # send_idx
        torch.tensor([0, 1]),  # send_off
        torch.tensor([1], dtype=i32),  # send_num
        torch.tensor([1], dtype=i32),  # recv_num
        torch.tensor([peer], dtype=i32),  # send_proc
        torch.tensor([peer], dtype=i32),  # recv_proc
        torch.tensor([handle]),  # comm
        torch.tensor([ME], dtype=i32),  # rank
    ]
    g = torch.tensor([[10.0 * ME, 1.0], [10.0 * ME + 1, 2.0], [0.0, 0.0]], requires_grad=True)
    y = torch.ops.dpa3.border_exchange(g, *cd)
    assert y[2].tolist() == [10.0 * peer + 1, 2.0], y
    (gg,) = torch.autograd.grad((y * torch.arange(1.0, 7.0).view(3, 2)).sum(), g)
    # own rows 1, 2 (weights 1..4) plus the peer's ghost weights 5, 6 on row 1; ghost row zero
    assert gg.tolist() == [[1.0, 2.0], [3.0 + 5.0, 4.0 + 6.0], [0.0, 0.0]], gg


def main() -> None:
    assert _ops.load_ops(), "libdpa3_ops.so not built"
    assert WORLD.Get_size() == 2
    comm = WORLD.Dup()
    solo = MPI.COMM_SELF.Dup()
    mode = torch.ops.dpa3.exchange_mode
    cuda = torch.device("cuda", 0)
    answers = {
        "provided": LEVELS[MPI.Query_thread()],
        "cpu": mode(torch.tensor([comm.py2f()]), torch.device("cpu")),
        "cuda": mode(torch.tensor([comm.py2f()]), cuda),
        "cuda-no-comm": mode(torch.zeros(1, dtype=torch.int64), cuda),
        "cuda-one-rank": mode(torch.tensor([solo.py2f()]), cuda),
    }
    exchange_with_peer(comm.py2f())
    solo.Free()
    comm.Free()
    # printed by rank 0 alone: lines of two ranks may interleave in mpirun's output
    everyone = WORLD.gather(answers, root=0)
    if ME == 0:
        for rank, ans in enumerate(everyone):
            for key, value in ans.items():
                print(f"rank {rank} {key}: {value}", flush=True)
        print("ALL OK np=2", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # any failure must take all ranks down, not hang them
        print(f"[rank {ME}] FAILED\n" + traceback.format_exc(), flush=True)
        WORLD.Abort(1)
        os._exit(1)
