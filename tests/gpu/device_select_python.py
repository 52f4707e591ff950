"""GPU check, part 1 (run by check_device_select.sh before the op library is built, so the
model takes its composite path): device selection in Python, the autograd-engine behaviour the
exchange's host routing relies on, DPA3Calculator and dpa3 train/test with --device auto.

Not a pytest module: GPU machines here have no pytest (a stand-in is installed for the imports
of tests/conftest.py)."""

import json
import os
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "python")]
try:
    import pytest  # noqa: F401
except ImportError:  # conftest.py and test_train.py only decorate with it at import time
    stub = types.ModuleType("pytest")
    stub.fixture = lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f)
    stub.mark = types.SimpleNamespace(parametrize=lambda *a, **k: lambda f: f, slow=lambda f: f)
    stub.param = lambda *values, **k: values
    sys.modules["pytest"] = stub
MAIN = threading.get_ident()
ok = True


def step(name, fn):
    global ok
    t0 = time.time()
    try:
        fn()
        print(f"PASS {name} ({time.time() - t0:.1f} s)", flush=True)
    except Exception:
        ok = False
        print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)


def a1():
    from dpa3.device import describe, resolve_device

    dev = resolve_device("auto")
    print(
        "  auto ->",
        dev,
        "|",
        describe("auto", dev),
        "| local_rank 3 ->",
        resolve_device("auto", local_rank=3),
        "| count",
        torch.cuda.device_count(),
    )
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")


def a2():
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, g):
            seen.append((g.device.type, threading.get_ident() == MAIN))
            return 2 * g

    x = torch.randn(10, 3, device=dev, requires_grad=True)
    torch.autograd.grad(Probe.apply(x).sum(), x)  # device gradient
    (gx,) = torch.autograd.grad(Probe.apply(x.to("cpu")).to(dev).sum(), x)  # host-routed
    print("  backward node: (gradient device, ran on the calling thread):", seen)
    assert gx.device == dev and torch.equal(gx.cpu(), torch.full((10, 3), 2.0, dtype=gx.dtype))
    if dev.type == "cuda":
        assert seen == [("cuda", False), ("cpu", True)], seen


def a3():
    try:
        from ase import Atoms
    except ImportError:
        print("  SKIP: ase is not installed here")
        return
    from conftest import TYPE_MAP, alloy_frame, make_model

    from dpa3.calculator import DPA3Calculator

    coord, atype, box = alloy_frame()
    atoms = Atoms([TYPE_MAP[t] for t in atype], positions=coord, cell=box.reshape(3, 3), pbc=True)
    res = {}
    for spec in ("cpu", "auto"):
        calc = DPA3Calculator(make_model(seed=31), device=spec)
        a = atoms.copy()
        a.calc = calc
        res[spec] = (calc.device, a.get_potential_energy(), a.get_forces(), a.get_stress())
    dev = res["auto"][0]
    de = abs(res["auto"][1] - res["cpu"][1])
    df = np.abs(res["auto"][2] - res["cpu"][2]).max()
    ds = np.abs(res["auto"][3] - res["cpu"][3]).max()
    print(f"  calculator auto on {dev}: |dE| {de:.2e} eV, max |dF| {df:.2e}, max |dS| {ds:.2e}")
    assert de < 1e-8 and df < 1e-8 and ds < 1e-8


def a4():
    from test_train import tiny_input

    from dpa3.cli.main import main

    mol = str(ROOT / "examples" / "data" / "molecules-nopbc" / "C1H4O2")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            Path("input.json").write_text(json.dumps(tiny_input(steps=2)))
            assert main(["train", "input.json", "--skip-neighbor-stat"]) == 0
            ck = torch.load("model.ckpt-2.pt", map_location="cpu", weights_only=True)
            print("  checkpoint keys:", sorted(ck)[:6])
            assert main(["test", "-m", "model.ckpt.pt", "-s", mol, "-n", "2"]) == 0
        finally:
            os.chdir(cwd)


step("A1 resolve_device", a1)
step("A2 autograd engine: CPU gradient -> calling thread, CUDA gradient -> worker", a2)
step("A3 DPA3Calculator default device (eager model) vs cpu", a3)
step("A4 dpa3 train (2 steps) + dpa3 test, default --device auto", a4)
print("PYTHON DEVICE CHECK", "OK" if ok else "FAILED")
