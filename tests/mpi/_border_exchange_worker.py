"""MPI worker for test_ops_mpi.py: ``mpirun -np N python _border_exchange_worker.py``.

Every rank simulates the whole (synthetic) swap schedule of all ranks with the same seeded RNG,
so each rank knows the global id of every one of its rows and can check the op against a global
reference: forward ``y_r = F[gid_r]``; backward ``gb_r[i] = sum over all ranks q and rows j with
gid_q[j] == gid_r[i] of gy_q[j]`` for local rows, zero for ghosts. Schedules: a ring with self
swaps and ghost forwarding, and 1-D / 2-D processor grids in LAMMPS brick order, with random,
asymmetric and zero counts, ranks without atoms and a rank without any rows.

Prints ``ALL OK`` on rank 0 when every check passed; any failure aborts the whole job.
"""

from __future__ import annotations

import os
import random
import sys
import traceback

import torch
from mpi4py import MPI

from dpa3 import _ops

WORLD = MPI.COMM_WORLD
ME = WORLD.Get_rank()
P = WORLD.Get_size()
F64 = torch.float64


def log(msg: str) -> None:
    print(f"[rank {ME}/{P}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------


def ring_swaps() -> list[tuple[list[int], list[int]]]:
    """(dest[r], src[r]) per swap: +1, -1, self, +1 (forwards ghosts), self, -1."""
    up = [(r + 1) % P for r in range(P)]
    down = [(r - 1) % P for r in range(P)]
    me = list(range(P))
    return [(up, down), (down, up), (me, me), (up, down), (me, me), (down, up)]


def grid_swaps(px: int, py: int, maxneed: int = 1) -> list[tuple[list[int], list[int]]]:
    """LAMMPS brick order: per dimension, maxneed x (send to lower / receive from upper,
    send to upper / receive from lower); self swaps along a dimension with one rank."""
    assert px * py == P
    swaps = []
    for dim, n in ((0, px), (1, py)):
        lower, upper = [], []
        for r in range(P):
            ix, iy = r % px, r // px
            if dim == 0:
                lower.append((ix - 1) % n + px * iy)
                upper.append((ix + 1) % n + px * iy)
            else:
                lower.append(ix + px * ((iy - 1) % n))
                upper.append(ix + px * ((iy + 1) % n))
        for _ in range(maxneed):
            swaps.append((lower, upper))
            swaps.append((upper, lower))
    return swaps


def simulate(nloc: list[int], swaps, seed: int, maxcount: int, silent: tuple[int, ...] = ()):
    """Build every rank's schedule; returns per rank (gid rows, send lists, recv counts, procs).

    silent: ranks that receive nothing (so with nloc 0 they have no rows at all).
    """
    rng = random.Random(seed)
    first = [sum(nloc[:r]) for r in range(P)]
    rows = [list(range(first[r], first[r] + nloc[r])) for r in range(P)]
    sends = [[] for _ in range(P)]
    recvs = [[] for _ in range(P)]
    for dest, src in swaps:
        for r in range(P):
            assert dest[src[r]] == r
        chosen = []
        for r in range(P):
            n = len(rows[r])
            if n == 0 or maxcount == 0 or dest[r] in silent or rng.random() < 0.2:
                k = 0  # zero counts, also where the peer sends something
            else:
                k = rng.randint(1, maxcount)
            chosen.append([rng.randrange(n) for _ in range(k)])  # repeats allowed
        for r in range(P):
            sends[r].append(chosen[r])
        for r in range(P):
            got = [rows[src[r]][i] for i in chosen[src[r]]]
            recvs[r].append(len(got))
            rows[r] = rows[r] + got
    return rows, sends, recvs, swaps


def comm_dict(sim, r: int, comm_handle: int) -> dict[str, torch.Tensor]:
    _rows, sends, recvs, swaps = sim
    counts = [len(x) for x in sends[r]]
    off = [0]
    for c in counts:
        off.append(off[-1] + c)
    return {
        "send_idx": torch.tensor([i for x in sends[r] for i in x], dtype=torch.int32),
        "send_off": torch.tensor(off, dtype=torch.int64),
        "send_num": torch.tensor(counts, dtype=torch.int32),
        "recv_num": torch.tensor(recvs[r], dtype=torch.int32),
        "send_proc": torch.tensor([d[r] for d, _ in swaps], dtype=torch.int32),
        "recv_proc": torch.tensor([s[r] for _, s in swaps], dtype=torch.int32),
        "comm": torch.tensor([comm_handle], dtype=torch.int64),
        "rank": torch.tensor([r], dtype=torch.int32),
    }


def args(cd: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    keys = ("send_idx", "send_off", "send_num", "recv_num", "send_proc", "recv_proc", "comm")
    return tuple(cd[k] for k in keys) + (cd["rank"],)


def op(g, cd):
    return torch.ops.dpa3.border_exchange(g, *args(cd))


def op_t(gy, cd):
    return torch.ops.dpa3.border_exchange_backward(gy, *args(cd))


def allsum(x) -> float:
    if isinstance(x, torch.Tensor):
        x = x.detach()
    return WORLD.allreduce(float(x), op=MPI.SUM)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


def check_scenario(name: str, sim, nloc: list[int], comm_handle: int, width: int = 3) -> None:
    rows = sim[0]
    gid = torch.tensor(rows[ME], dtype=torch.int64)
    nall, nl = gid.numel(), nloc[ME]
    natoms = sum(nloc)
    cd = comm_dict(sim, ME, comm_handle)
    assert int(cd["recv_num"].sum()) == nall - nl

    # global tables, identical on every rank
    gen = torch.Generator().manual_seed(1234)
    feat = torch.randn(natoms, width, dtype=F64, generator=gen)
    gys = [torch.randn(len(rows[q]), width, dtype=F64, generator=gen) for q in range(P)]
    acc = torch.zeros(natoms, width, dtype=F64)
    for q in range(P):
        acc.index_add_(0, torch.tensor(rows[q], dtype=torch.int64), gys[q])
    expected_y = feat[gid]
    expected_gb = torch.zeros(nall, width, dtype=F64)
    expected_gb[:nl] = acc[gid[:nl]]
    gy = gys[ME]

    # forward: ghost inputs are never read
    g = torch.full((nall, width), float("nan"), dtype=F64)
    g[:nl] = feat[gid[:nl]]
    g.requires_grad_(True)
    y = op(g, cd)
    assert torch.equal(y, expected_y), f"{name}: forward differs"

    # backward through autograd and through the op
    y.backward(gy)
    torch.testing.assert_close(g.grad, expected_gb, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(op_t(gy, cd), expected_gb, rtol=1e-13, atol=1e-13)

    # float32
    y32 = op(g.detach().float(), cd)
    assert torch.equal(y32, expected_y.float()), f"{name}: float32 forward differs"

    # adjoint identity <B g, gy> = <g, B^T gy>, summed over ranks, random ghost inputs
    g2 = torch.randn(nall, width, dtype=F64, generator=torch.Generator().manual_seed(ME + 7))
    lhs = allsum((op(g2, cd) * gy).sum())
    rhs = allsum((g2 * op_t(gy, cd)).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)), f"{name}: adjoint {lhs} vs {rhs}"

    # every rank takes the same steps, so the collective calls line up
    WORLD.Barrier()
    if ME == 0:
        log(f"{name}: ok (nall per rank {[len(x) for x in rows]})")


def check_gradcheck(sim, comm_handle: int, eps: float = 1e-6) -> None:
    """Distributed gradcheck of E = sum over ranks of sum(w_r * sin(B(g)_r)).

    torch.autograd.gradcheck cannot be used per rank: perturbing g_r also changes the outputs
    of other ranks, and its slow-mode fallback would make the ranks call the op a different
    number of times (a deadlock). Instead every rank takes the same steps: autograd gradient,
    then central differences of the global E along random directions, compared with
    sum over ranks of <dE/dg_r, u_r>.
    """
    cd = comm_dict(sim, ME, comm_handle)
    nall = len(sim[0][ME])
    gen = torch.Generator().manual_seed(100 + ME)
    g = torch.randn(nall, 2, dtype=F64, generator=gen, requires_grad=True)
    w = torch.randn(nall, 2, dtype=F64, generator=gen)

    def energy(x: torch.Tensor) -> torch.Tensor:
        return (w * torch.sin(op(x, cd))).sum()

    (grad,) = torch.autograd.grad(energy(g), g)
    assert torch.count_nonzero(grad[nall - int(cd["recv_num"].sum()) :]) == 0
    for _ in range(3):
        u = torch.randn(nall, 2, dtype=F64, generator=gen)
        with torch.no_grad():
            ep = allsum(energy(g + eps * u))
            em = allsum(energy(g - eps * u))
        numeric = (ep - em) / (2 * eps)
        analytic = allsum((grad * u).sum())
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)
    WORLD.Barrier()
    if ME == 0:
        log("gradcheck: ok")


def energy_force(coord: torch.Tensor, cd: dict[str, torch.Tensor]):
    coord = coord.detach().requires_grad_(True)
    nloc = coord.shape[0] - int(cd["recv_num"].sum())
    h = torch.ops.dpa3.border_exchange(
        torch.sin(coord),
        cd["send_idx"],
        cd["send_off"],
        cd["send_num"],
        cd["recv_num"],
        cd["send_proc"],
        cd["recv_proc"],
        cd["comm"],
        cd["rank"],
    )
    e = (h[:nloc].unsqueeze(1) * h.unsqueeze(0)).sum()
    force = torch.autograd.grad([e], [coord])[0]
    assert force is not None
    return e, -force


def check_torchscript(sim, nloc: list[int], comm_handle: int) -> None:
    """Scripted energy with forces by autograd.grad through the exchange vs a global reference."""
    rows = sim[0]
    cd = comm_dict(sim, ME, comm_handle)
    natoms = sum(nloc)
    x = torch.randn(natoms, 3, dtype=F64, generator=torch.Generator().manual_seed(99))
    gid = torch.tensor(rows[ME], dtype=torch.int64)
    coord = x[gid].clone()
    e, f = torch.jit.script(energy_force)(coord, cd)  # scripted after the ops are loaded
    # reference: the same energy built from global quantities, differentiated w.r.t. x
    xr = x.clone().requires_grad_(True)
    e_tot = torch.zeros((), dtype=F64)
    for q in range(P):
        gq = torch.tensor(rows[q], dtype=torch.int64)
        h = torch.sin(xr[gq])
        e_tot = e_tot + (h[: nloc[q]].unsqueeze(1) * h.unsqueeze(0)).sum()
    (gx,) = torch.autograd.grad(e_tot, xr)
    # forces land on owners: the local rows of f summed over ranks equal -dE_total/dx
    f_glob = torch.zeros(natoms, 3, dtype=F64)
    f_glob.index_add_(0, gid[: nloc[ME]], f[: nloc[ME]])
    f_glob = torch.from_numpy(WORLD.allreduce(f_glob.numpy(), op=MPI.SUM))
    torch.testing.assert_close(f_glob, -gx, rtol=1e-12, atol=1e-12)
    assert abs(allsum(e) - float(e_tot)) < 1e-10
    assert torch.count_nonzero(f[nloc[ME] :]) == 0
    WORLD.Barrier()
    if ME == 0:
        log("torchscript: ok")


def check_errors(sim, comm_handle: int) -> None:
    """Failures that every rank detects before any communication (so nothing hangs)."""
    nall = len(sim[0][ME])
    g = torch.zeros(nall, 2, dtype=F64)
    has_peer = any(d[ME] != ME or s[ME] != ME for d, s in sim[3])
    if has_peer:
        cd = comm_dict(sim, ME, 0)  # MPI is up but the handle says "no MPI"
        try:
            op(g, cd)
            raise AssertionError("comm == 0 with a non-self swap did not fail")
        except RuntimeError as exc:
            assert "handle is 0" in str(exc), str(exc)
    # one empty swap with this rank as peer, but a rank tensor naming another rank
    i32 = torch.int32
    cd = {
        "send_idx": torch.zeros(0, dtype=i32),
        "send_off": torch.zeros(2, dtype=torch.int64),
        "send_num": torch.zeros(1, dtype=i32),
        "recv_num": torch.zeros(1, dtype=i32),
        "send_proc": torch.tensor([ME], dtype=i32),
        "recv_proc": torch.tensor([ME], dtype=i32),
        "comm": torch.tensor([comm_handle]),
        "rank": torch.tensor([(ME + 1) % P], dtype=i32),
    }
    try:
        op(g, cd)
        raise AssertionError("a wrong rank tensor did not fail")
    except RuntimeError as exc:
        assert "MPI_Comm_rank" in str(exc), str(exc)
    WORLD.Barrier()
    if ME == 0:
        log("errors: ok")


def check_allreduce(comm_handle: int) -> None:
    x = torch.tensor([ME, -ME, 10 + ME], dtype=torch.int64)
    y = torch.ops.dpa3.allreduce_min(x, torch.tensor([comm_handle]))
    assert y.tolist() == [0, -(P - 1), 10], y
    z = torch.ops.dpa3.allreduce_min(torch.tensor([float(ME) + 0.5]), torch.tensor([comm_handle]))
    assert float(z) == 0.5
    if ME == 0:
        log("allreduce_min: ok")


def grids() -> list[tuple[int, int]]:
    out = [(P, 1), (1, P)]
    if P == 4:
        out.append((2, 2))
    return out


def main() -> int:
    torch.set_num_threads(1)
    assert _ops.load_ops(), "libdpa3_ops.so not built"
    assert torch.ops.dpa3.enable_mpi(), "libdpa3_ops.so was built without MPI"
    comm = WORLD.Dup()  # as the LAMMPS plugin does: no tag clashes with other traffic
    handle = comm.py2f()

    base = [3 + (5 * r) % 4 for r in range(P)]  # uneven atom counts
    sparse = [0 if r == P - 1 else n for r, n in enumerate(base)]  # a rank owning nothing
    scenarios = []
    for seed in range(3):
        scenarios.append((f"ring seed {seed}", base, ring_swaps(), seed, 4, ()))
    for px, py in grids():
        for maxneed in (1, 2):
            swaps = grid_swaps(px, py, maxneed)
            scenarios.append((f"grid {px}x{py} maxneed {maxneed}", base, swaps, 10 + px, 5, ()))
    scenarios.append(("ring, rank without atoms", sparse, ring_swaps(), 21, 3, ()))
    scenarios.append(("ring, rank without rows", sparse, ring_swaps(), 22, 3, (P - 1,)))
    scenarios.append(("grid, all counts zero", base, grid_swaps(P, 1), 23, 0, ()))
    scenarios.append(("no swaps", base, [], 24, 3, ()))

    for name, nloc, swaps, seed, maxcount, silent in scenarios:
        sim = simulate(nloc, swaps, seed, maxcount, silent)
        check_scenario(name, sim, nloc, handle)

    sim = simulate(base, grid_swaps(P, 1, 2), 31, 3)
    check_gradcheck(sim, handle)
    check_torchscript(sim, base, handle)
    check_errors(sim, handle)
    check_allreduce(handle)
    comm.Free()
    if ME == 0:
        print(f"ALL OK np={P} barrier={os.environ.get('DPA3_COMM_BARRIER', '0')}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except BaseException:  # any failure must take all ranks down, not hang them
        log("FAILED\n" + traceback.format_exc())
        sys.stdout.flush()
        WORLD.Abort(1)
        os._exit(1)
    sys.exit(rc)
