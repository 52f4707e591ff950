"""Quickstart config search: train a variant of examples/quickstart/input.json, test it on data_3.

    python benchmarks/quickstart_sweep.py NAME [--set KEY.PATH=JSON ...] [--threads N]
                                          [--workdir DIR] [--test-every K] [--out FILE]

Copies examples/quickstart/input.json into ``DIR/NAME`` (data paths made absolute), applies
the ``--set`` overrides (dotted key path = JSON value, e.g. ``learning_rate.start_lr=0.005``,
``model.descriptor.repflow.nlayers=1``), runs ``dpa3 train`` there with
``OMP_NUM_THREADS=N`` (default: unset, torch's default thread count, as scripts/quickstart.sh),
then ``dpa3 test`` of the final checkpoint on examples/data/water/data_3 (all 80 frames and the
first 20, as the quickstart's ``-n 20``) and, with ``--test-every K``, of every K-th saved
checkpoint (``save_freq`` is set to K). Prints one markdown table row per tested checkpoint:
name, step, s/step of the run (dpa3's own "finished ... s/step" line), wall time of ``dpa3 train``,
energy RMSE/atom and force RMSE on 20 and 80 frames, load average before and after the run.
The machine is shared: read the load columns before comparing speeds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "examples" / "quickstart" / "input.json"
DATA = ROOT / "examples" / "data" / "water"


def load() -> str:
    """The 1/5/15-minute load average as one string."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def apply(cfg: dict, item: str) -> None:
    """Set ``a.b.c=JSON`` in ``cfg``."""
    key, _, raw = item.partition("=")
    *path, last = key.split(".")
    node = cfg
    for k in path:
        node = node[k]
    node[last] = json.loads(raw)


def rmse(model: Path, cwd: Path, frames: int) -> tuple[float, float]:
    """(energy RMSE/atom, force RMSE) of ``dpa3 test`` on data_3 (first ``frames``; 0 = all)."""
    out = subprocess.run(
        ["dpa3", "test", "-m", str(model), "-s", str(DATA / "data_3"), "-n", str(frames)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    text = out.stdout + out.stderr
    e = float(re.search(r"Energy RMSE/Natoms\s*:\s*(\S+)", text).group(1))
    f = float(re.search(r"Force\s+RMSE\s*:\s*(\S+)", text).group(1))
    return e, f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "quickstart_sweep"))
    ap.add_argument("--test-every", type=int, default=0)
    ap.add_argument("--out", default=None, help="append the rows to this file")
    args = ap.parse_args()

    cfg = json.loads(BASE.read_text())
    tr = cfg["training"]
    tr["training_data"]["systems"] = [str(DATA / f"data_{i}") for i in range(3)]
    tr["validation_data"]["systems"] = [str(DATA / "data_3")]
    for item in args.set:
        apply(cfg, item)
    if args.test_every:
        tr["save_freq"] = args.test_every
    run = Path(args.workdir) / args.name
    run.mkdir(parents=True, exist_ok=True)
    (run / "input.json").write_text(json.dumps(cfg, indent=2))

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    before = load()
    t0 = time.perf_counter()
    with open(run / "train.log", "w") as fh:
        subprocess.run(
            ["dpa3", "train", "input.json"], cwd=run, env=env, stdout=fh, stderr=fh, check=True
        )
    wall = time.perf_counter() - t0
    after = load()
    m = re.search(
        r"finished (\d+) steps in ([\d.]+) s \(([\d.]+) s/step\)", (run / "train.log").read_text()
    )
    sps = float(m.group(3)) if m else float("nan")
    steps = tr["numb_steps"]

    ckpts = []
    if args.test_every:
        ckpts = [
            (s, run / f"model.ckpt-{s}.pt") for s in range(args.test_every, steps, args.test_every)
        ]
    ckpts.append((steps, run / f"model.ckpt-{steps}.pt"))
    rows = []
    for step, ck in ckpts:
        if not ck.exists():
            continue
        e20, f20 = rmse(ck, run, 20)
        e80, f80 = rmse(ck, run, 0)
        threads = args.threads or "default"
        rows.append(
            f"| {args.name} | {step}/{steps} | {threads} | {sps:.3f} | {wall:.0f} "
            f"| {e20 * 1e3:.2f} | {f20:.3f} | {e80 * 1e3:.2f} | {f80:.3f} | {before} ; {after} |"
        )
    text = "\n".join(rows)
    print(" ".join(args.set))
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(f"<!-- {args.name}: {' '.join(args.set)} -->\n{text}\n")


if __name__ == "__main__":
    main()
