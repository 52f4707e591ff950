"""Data-parallel training under ``torchrun`` (CPU, gloo): equivalence, gradient averaging, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_multitask import tiny_multitask
from test_train import tiny_input

from dpa3.train.checkpoint import load_checkpoint
from dpa3.train.distributed import DistContext, init_distributed, torchrun_env

# torch's CPU wheels always ship gloo; its absence is an installation error, not a skip
assert torch.distributed.is_available() and torch.distributed.is_gloo_available()

#: Runs under torchrun (and, imported, in the test process as the one-rank reference).
#: Rank r trains on frames [r B, (r+1) B) of each 2B-frame block, so two ranks with B frames
#: see exactly the frames of one process with 2B frames.
WORKER = r'''
import json
import os
import sys

import numpy as np
import torch

from dpa3.data.loader import make_batch
from dpa3.train.distributed import init_distributed, shutdown_distributed
from dpa3.train.trainer import Trainer


def fixed_batches(system, nframes, rank, world):
    """Step s of rank r: frames [(s world + r) nframes, (s world + r + 1) nframes)."""
    step = [0]

    def nxt():
        start = (step[0] * world + rank) * nframes
        step[0] += 1
        return make_batch(system, np.arange(start, start + nframes), 0)

    return nxt


def train(cfg, nframes, nsteps, rank=0, world=1):
    t = Trainer(cfg)
    t.train_data.next = fixed_batches(t.train_data.systems[0], nframes, rank, world)
    for s in range(nsteps):
        t.train_step(s)
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def grad_check(ctx):
    """DDP semantics of DistContext.average_gradients with unused parameters and two dtypes."""
    f64, f32 = torch.float64, torch.float32
    p = [torch.nn.Parameter(torch.zeros(3, dtype=f64)) for _ in range(3)]
    p.append(torch.nn.Parameter(torch.zeros(2, dtype=f32)))
    p[0].grad = torch.full((3,), float(ctx.rank + 1), dtype=f64)  # mean of 1, 2
    if ctx.rank == 1:
        p[1].grad = torch.full((3,), 4.0, dtype=f64)  # used on one rank: 4 / 2
    p[3].grad = torch.full((2,), float(ctx.rank), dtype=f32)
    ok = ctx.average_gradients(p, True)
    out = {
        "ok": ok,
        "g0": p[0].grad.tolist(),
        "g1": p[1].grad.tolist(),
        "g2_none": p[2].grad is None,
        "g3": p[3].grad.tolist(),
        "g3_dtype": str(p[3].grad.dtype),
    }
    out["nonfinite"] = ctx.average_gradients(p, ctx.rank == 0)  # rank 1 reports a NaN loss
    out["any"] = [ctx.any(ctx.rank == 1), ctx.any(False)]
    out["seeds"] = ctx.all_gather_object([ctx.rank_seed(10), ctx.rank_seed(None)])
    return out


if __name__ == "__main__":
    cfg_path, out_path = sys.argv[1], sys.argv[2]
    nframes, nsteps = int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    threads = [len(os.listdir("/proc/self/task"))]
    ctx, _ = init_distributed("cpu")
    info = grad_check(ctx)
    # builds the optimizer, whose first use imports torch._dynamo -> torch.distributed.nn
    state = train(json.load(open(cfg_path)), nframes, nsteps, ctx.rank, ctx.world_size)
    shutdown_distributed()
    info["threads"] = threads + [len(os.listdir("/proc/self/task"))]
    if ctx.is_main:
        torch.save({"state": state, "info": info, "world": ctx.world_size}, out_path)
'''


def _torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 300) -> str:
    """Run ``torchrun --standalone --nproc_per_node nproc ARGS``; fail (never hang) on errors."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the workers join this group, so a timeout kills them all
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{out[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{out[-6000:]}")
    return out


def test_single_process_without_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() is None
    ctx, dev = init_distributed("cpu")
    assert ctx == DistContext() and not ctx.enabled and ctx.is_main and dev.type == "cpu"
    assert ctx.rank_seed(10) == 10 and ctx.rank_seed(None) is None
    assert ctx.run_on_main(lambda: 3) == 3 and ctx.any(True) and ctx.all_gather_object(1) == [1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() == (0, 1, 0)
    assert init_distributed("cpu")[0] == DistContext()  # one rank: no process group


def test_two_ranks_equal_one_process_with_twice_the_batch(tmp_path):
    """2 ranks x B frames == 1 process x 2B frames (float64, two steps, updated weights 1e-10)."""
    nframes, nsteps = 2, 2
    cfg = tiny_input(steps=nsteps)  # float64 molecule model, AdamW, gradient clipping
    (tmp_path / "input.json").write_text(json.dumps(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    _torchrun(
        ["worker.py", "input.json", "ddp.pt", str(nframes), str(nsteps)], tmp_path, timeout=300
    )
    got = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert got["world"] == 2

    ns: dict = {}
    exec(compile(WORKER, "worker", "exec"), ns)  # the same functions in-process
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        torch.set_num_threads(1)
        from dpa3.train.trainer import Trainer

        init = {k: v.clone() for k, v in Trainer(cfg).model.state_dict().items()}
        ref = ns["train"](cfg, 2 * nframes, nsteps)
    finally:
        os.chdir(cwd)
    assert set(ref) == set(got["state"])
    moved = 0
    for k, v in ref.items():
        torch.testing.assert_close(got["state"][k], v, rtol=0, atol=1e-10, msg=k)
        moved += int(not torch.equal(v, init[k]))
    assert moved > 10  # the steps changed the weights

    info = got["info"]
    assert info["ok"] is True and info["nonfinite"] is False
    assert info["g0"] == [1.5] * 3 and info["g1"] == [2.0] * 3 and info["g2_none"]
    assert info["g3"] == [0.5, 0.5] and info["g3_dtype"] == "torch.float32"
    assert info["any"] == [True, False]
    seeds = info["seeds"]
    assert seeds[0][0] == 10 and seeds[1][0] not in (10, None)  # rank 0 keeps the seed
    assert seeds[0][1] is None and seeds[1][1] is None
    # the process group's gloo threads end with shutdown_distributed: a group kept alive
    # (by torch.distributed.nn's defaults) let them release tensors during interpreter
    # shutdown, a rare SIGABRT at exit
    assert info["threads"][1] == info["threads"][0], info["threads"]


def test_torchrun_cli_multitask_and_restart(tmp_path):
    """``torchrun -m dpa3 train``: rank 0 alone writes; per-rank streams; exact restart."""
    d = tiny_multitask(steps=4, disp_freq=2, save_freq=2)
    a, b = tmp_path / "a", tmp_path / "b"
    for wd in (a, b):
        wd.mkdir()
        (wd / "input.json").write_text(json.dumps(d))
    out = _torchrun(["-m", "dpa3", "train", "input.json", "--skip-neighbor-stat"], a)
    assert "2 ranks" in out
    assert out.count("step 1/4") == 1 and out.count("final checkpoint") == 1  # rank 0 logs
    rows = [ln.split() for ln in (a / "lcurve.out").read_text().splitlines() if ln[0] != "#"]
    assert [int(r[0]) for r in rows] == [1, 2, 4]
    assert sorted(p.name for p in a.glob("model.ckpt-*.pt")) == [
        "model.ckpt-2.pt",
        "model.ckpt-4.pt",
    ]
    assert not list(a.glob(".*tmp*"))
    ck = load_checkpoint(a / "model.ckpt-4.pt")
    smp = ck["sampler"]
    for task in ("water", "alloy"):
        ranks = smp["tasks"][task]["train_ranks"]
        assert len(ranks) == 2 and ranks[0]["rng"] != ranks[1]["rng"]  # own stream per rank
    assert smp["task_rng_ranks"][0] != smp["task_rng_ranks"][1]  # each rank draws its tasks

    out = _torchrun(
        [
            "-m",
            "dpa3",
            "train",
            "input.json",
            "--skip-neighbor-stat",
            "--restart",
            str(a / "model.ckpt-2.pt"),
        ],
        b,
    )
    assert "from 2" in out
    full, rest = ck["model"], load_checkpoint(b / "model.ckpt-4.pt")["model"]
    for k, v in full["shared"].items():
        assert torch.equal(v, rest["shared"][k]), k
    for h, st in full["heads"].items():
        for k, v in st.items():
            assert torch.equal(v, rest["heads"][h][k]), (h, k)
    np.testing.assert_array_equal(
        ck["multitask"]["type_map"], load_checkpoint(b / "model.ckpt-4.pt")["multitask"]["type_map"]
    )
