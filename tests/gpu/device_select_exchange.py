"""GPU check, part 2: ``mpiexec -np 2 python device_select_exchange.py LEVEL`` (run by
check_device_select.sh): dpa3::border_exchange with CUDA features on 2 ranks under MPI thread
level LEVEL (single, funneled, serialized, multiple), against the same exchange on the CPU.
Reports the exchange mode, the autograd nodes around the op, on which thread the backward
exchange node runs (a pre-hook on the node), and any warning the op raised. Below
MPI_THREAD_SERIALIZED the op must be host-routed: grad_fn ToCopyBackward0 -> BorderExchange,
backward exchange on the calling thread, no warning."""

import os
import sys
import threading
import traceback
import warnings

import mpi4py

mpi4py.rc.thread_level = sys.argv[1]  # must precede the import of mpi4py.MPI (MPI_Init_thread)
import torch
from mpi4py import MPI

from dpa3 import _ops

W = MPI.COMM_WORLD
ME, P = W.Get_rank(), W.Get_size()
MAIN = threading.get_ident()


def schedule(handle, nloc=40, width=8):
    """Swap 0: 7 rows to the peer; swap 1: self swap of 5 rows (ghosts of swap 0 included);
    swap 2: 3 rows (a ghost from swap 0 among them) back to the peer."""
    peer = (ME + 1) % P
    g = torch.Generator().manual_seed(ME)
    s0 = torch.randint(0, nloc, (7,), generator=g)
    s1 = torch.cat([torch.randint(0, nloc, (3,), generator=g), torch.tensor([nloc, nloc + 6])])
    s2 = torch.tensor([1, nloc + 2, nloc + 7])
    idx = torch.cat([s0, s1, s2]).to(torch.int32)
    i32 = torch.int32
    cd = [
        idx,
        torch.tensor([0, 7, 12, 15]),
        torch.tensor([7, 5, 3], dtype=i32),
        torch.tensor([7, 5, 3], dtype=i32),
        torch.tensor([peer, ME, peer], dtype=i32),
        torch.tensor([peer, ME, peer], dtype=i32),
        torch.tensor([handle]),
        torch.tensor([ME], dtype=i32),
    ]
    x = torch.randn(nloc + 15, width, generator=g, dtype=torch.float64)
    w = torch.randn(nloc + 15, width, generator=g, dtype=torch.float64)
    return cd, x, w


def run(dev, cd, x, w):
    cd = [cd[0].to(dev)] + cd[1:]
    g = x.to(dev).requires_grad_(True)
    threads = []
    y = torch.ops.dpa3.border_exchange(g, *cd)
    node = y.grad_fn
    names = [node.name()]
    ex = node
    while "BorderExchange" not in ex.name():
        ex = ex.next_functions[0][0]
        names.append(ex.name())
    ex.register_prehook(lambda grads: threads.append(threading.get_ident() == MAIN))
    (gx,) = torch.autograd.grad((y * w.to(dev)).sum(), g)
    return y.detach().cpu(), gx.cpu(), names, threads


def main():
    assert _ops.load_ops()
    comm = W.Dup()
    handle = comm.py2f()
    dev = (
        torch.device("cuda", ME % torch.cuda.device_count())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    level = {
        MPI.THREAD_SINGLE: "SINGLE",
        MPI.THREAD_FUNNELED: "FUNNELED",
        MPI.THREAD_SERIALIZED: "SERIALIZED",
        MPI.THREAD_MULTIPLE: "MULTIPLE",
    }
    cd, x, w = schedule(handle)
    y_ref, g_ref, _, _ = run(torch.device("cpu"), cd, x, w)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y, gx, names, threads = run(dev, cd, x, w)
        for _ in range(3):  # repeated, as per layer
            run(dev, cd, x, w)
    mode = torch.ops.dpa3.exchange_mode(torch.tensor([handle]), dev)
    same = torch.equal(y, y_ref) and torch.allclose(gx, g_ref, rtol=0, atol=1e-12)
    line = (
        f"rank {ME}: level {level[MPI.Query_thread()]} | device {dev} | mode {mode} | "
        f"grad_fn chain {names} | backward exchange on calling thread {threads} | "
        f"equal to cpu {same} | warnings {[str(r.message)[:120] for r in rec]}"
    )
    comm.Free()
    lines = W.gather(line, root=0)  # printed by rank 0: mpirun may interleave ranks' lines
    if ME == 0:
        print("\n".join(lines), flush=True)
    assert same
    W.Barrier()
    if ME == 0:
        print("EXCHANGE CHECK OK", sys.argv[1], flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        print(f"[rank {ME}] FAILED\n{traceback.format_exc()}", flush=True)
        W.Abort(1)
        os._exit(1)
