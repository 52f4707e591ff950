"""Generate DeePMD-kit ``dp change-bias`` and ``dp show`` fixtures (tests/data/dp_cli/).

Needs DeePMD-kit 3.2.0 (PyTorch backend) in .venv-deepmd:

    .venv-deepmd/bin/python tests/dp_cli/generate_reference.py

Works on tests/data/model_devi/m0.ckpt.pt (a float64 DeePMD-kit DPA3 checkpoint, type map
O H) and the labelled systems tests/data/dp_test/sys_a and sys_b, copied into a scratch
folder.  Deterministic (every case uses all frames: ``-n 0``).  Writes:

* ``change_bias.json``: case -> {"args": the ``dp --pt change-bias m0.ckpt.pt`` arguments
  (cwd = the scratch folder), "bias_before", "bias_after": the energy bias per type read from
  the input and output checkpoints};
* ``show_ckpt.log`` / ``show_pth.log``: the log of ``dp --pt show m0.ckpt.pt`` (and of the
  model frozen from it) ``type-map descriptor fitting-net size``;
* ``versions.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("DEVICE", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import deepmd
import torch

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "dp_cli"
CKPT = REPO / "tests" / "data" / "model_devi" / "m0.ckpt.pt"
SYSTEMS = REPO / "tests" / "data" / "dp_test"

CASES = {
    "change_sys_a": ["-s", "sys_a", "-m", "change"],
    "set_sys_a": ["-s", "sys_a", "-m", "set"],
    "change_both": ["-f", "systems.txt", "-m", "change"],
    "set_both": ["-s", "data", "-m", "set"],
    "user_bias": ["-b", "-93.5", "-187.25"],
}


def run_dp(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, DEVICE="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "deepmd", "--pt", *args],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"dp {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def out_bias(path: Path) -> list[float]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("model", obj)
    (key,) = [k for k in state if k.endswith("out_bias")]
    return [float(x) for x in state[key].reshape(-1)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copy(CKPT, tmp / "m0.ckpt.pt")
        for name in ("sys_a", "sys_b"):
            shutil.copytree(SYSTEMS / name, tmp / name)
            shutil.copytree(SYSTEMS / name, tmp / "data" / name)
        (tmp / "systems.txt").write_text("sys_a\nsys_b\n")
        before = out_bias(tmp / "m0.ckpt.pt")
        result = {}
        for case, args in CASES.items():
            run_dp(["change-bias", "m0.ckpt.pt", *args, "-o", f"{case}.pt"], tmp)
            after = out_bias(tmp / f"{case}.pt")
            result[case] = {"args": args, "bias_before": before, "bias_after": after}
        (OUT / "change_bias.json").write_text(json.dumps(result, indent=2) + "\n")
        attrs = ["type-map", "descriptor", "fitting-net", "size"]
        (OUT / "show_ckpt.log").write_text(run_dp(["show", "m0.ckpt.pt", *attrs], tmp))
        run_dp(["freeze", "-c", "m0.ckpt.pt", "-o", "m0.pth"], tmp)
        (OUT / "show_pth.log").write_text(run_dp(["show", "m0.pth", *attrs], tmp))
    (OUT / "versions.txt").write_text(
        f"deepmd-kit {deepmd.__version__}\ntorch {torch.__version__}\n"
    )


if __name__ == "__main__":
    main()
