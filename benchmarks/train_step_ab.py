"""A/B timing of dpa3 training steps: two source trees (each with its op library) back to back.

    python benchmarks/train_step_ab.py --tree A=/path/to/A/python --tree B=/path/to/B/python \
        [--configs small recipe] [--threads 1 2] [--steps 30] [--warmup 5] [--rounds 3]

Each ``--tree`` is a folder that holds the ``dpa3`` package (its ``dpa3/lib`` with the op library
built from the same sources).  Every round runs every (config, threads, tree) case in a fresh
subprocess, the trees alternating, so that the load of a shared machine hits both alike.  A case
builds :class:`dpa3.train.trainer.Trainer` from the config's ``input.json`` (``small``:
examples/quickstart/input.json, ``recipe``: examples/water/input.json; data paths made absolute,
statistics in a temporary folder) and times ``--steps`` calls of ``Trainer.train_step`` (the step
``dpa3 train`` runs: batch, forward with forces, loss, backward, clipping, optimizer) after
``--warmup`` steps; validation and checkpoints are not included.  Prints, per case, the median
over rounds of each tree's median step time and the ratio B/A; on a shared machine also the
ratio of the fastest rounds and the median of the per-round ratios (the two trees of a round run
one right after the other); the loss after the timed steps (the two trees must agree to
rounding) and the load average before each case.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "recipe": ROOT / "examples" / "water" / "input.json",
    "small": ROOT / "examples" / "quickstart" / "input.json",
}

CHILD = r"""
import json, logging, os, sys, time
import torch
cfg_path, threads, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
logging.disable(logging.WARNING)
from dpa3 import _ops
from dpa3.train.trainer import Trainer
os.chdir(os.path.dirname(cfg_path))
tr = Trainer(json.loads(open(cfg_path).read()))
tr.model.train()
for s in range(warmup):
    tr.train_step(s)
ts = []
for s in range(warmup, warmup + steps):
    t0 = time.perf_counter()
    loss, _, _ = tr.train_step(s)
    ts.append(time.perf_counter() - t0)
print(json.dumps({"times": ts, "loss": loss, "lib": str(_ops.library_path())}))
"""


def make_input(name: str, workdir: Path) -> Path:
    src = CONFIGS[name]
    cfg = copy.deepcopy(json.loads(src.read_text()))
    t = cfg["training"]
    for key in ("training_data", "validation_data"):
        s = t[key]["systems"]
        t[key]["systems"] = [
            str((src.parent / p).resolve()) for p in ([s] if isinstance(s, str) else s)
        ]
    t["stat_file"] = str(workdir / f"stat_{name}")
    t["numb_steps"] = 100000
    out = workdir / name / "input.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(cfg))
    return out


def run_case(tree: str, cfg: Path, threads: int, steps: int, warmup: int) -> dict:
    env = dict(
        os.environ, PYTHONPATH=tree, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)
    )
    cmd = [sys.executable, "-c", CHILD, str(cfg), str(threads), str(steps), str(warmup)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"case failed ({tree}, {cfg}, {threads}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, help="NAME=folder holding dpa3")
    ap.add_argument("--configs", nargs="+", default=["small"], choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    names = list(trees)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {c: make_input(c, Path(tmp)) for c in args.configs}
        med: dict[tuple, list[float]] = {}
        loss: dict[tuple, float] = {}
        loads: list[str] = []
        for r in range(args.rounds):
            for c in args.configs:
                for th in args.threads:
                    for name in names if r % 2 == 0 else names[::-1]:
                        loads.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
                        out = run_case(trees[name], inputs[c], th, args.steps, args.warmup)
                        med.setdefault((c, th, name), []).append(statistics.median(out["times"]))
                        loss[(c, th, name)] = out["loss"]
                        print(
                            f"round {r} {c} {th} thread(s) {name}: "
                            f"{statistics.median(out['times']):.4f} s/step ({out['lib']})",
                            flush=True,
                        )
    a, b = names[0], names[-1]
    print(
        f"\n| config | threads | {a} s/step | {b} s/step | {b} / {a} | same, fastest round | "
        f"same, median of per-round ratios | loss {a} | loss {b} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for c in args.configs:
        for th in args.threads:
            ra, rb = med[(c, th, a)], med[(c, th, b)]
            ta, tb = statistics.median(ra), statistics.median(rb)
            ratios = [y / x for x, y in zip(ra, rb, strict=True)]
            print(
                f"| {c} | {th} | {ta:.4f} | {tb:.4f} | {tb / ta:.2f} | "
                f"{min(rb):.4f} / {min(ra):.4f} = {min(rb) / min(ra):.2f} | "
                f"{statistics.median(ratios):.2f} | "
                f"{loss[(c, th, a)]:.6g} | {loss[(c, th, b)]:.6g} |"
            )
    rounds = {"/".join(map(str, k)): [round(x, 4) for x in v] for k, v in med.items()}
    print(f"\nper-round medians: {rounds}")
    print(f"load average (1/5/15 min) before each case: {'; '.join(loads)}")
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
