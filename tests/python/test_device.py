"""Device choice (``--device auto|cpu|cuda``, ``DPA3Calculator(device=...)``) and its use by
``init_distributed``.  The GPU branches are exercised with a patched ``torch.cuda``: the
functions under test only return ``torch.device`` objects, they never touch a GPU."""

from __future__ import annotations

import pytest
import torch

from dpa3.device import DeviceError, describe, resolve_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_follows_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_without_gpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert describe("auto", torch.device("cpu")) == "device cpu (auto: no CUDA device visible)"
    assert describe("cpu", torch.device("cpu")) == "device cpu"
    for spec in ("cuda", "cuda:0", torch.device("cuda", 0)):
        with pytest.raises(DeviceError, match="--device .*: no CUDA device is visible"):
            resolve_device(spec, option="--device")


def test_with_two_gpus(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("AUTO ") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    # torchrun: node-local rank modulo the visible GPUs
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 0)
    # an explicit GPU wins over the rank
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(DeviceError, match="only 2 visible CUDA device"):
        resolve_device("cuda:2")
    assert describe("auto", torch.device("cuda", 1)).startswith("device cuda:1 (auto: 2 CUDA")


@pytest.mark.parametrize("spec", ["gpu", "", "cuda:x", "cpu:0", "auto:1", "mps", "cuda:-1"])
def test_unknown_values(spec):
    with pytest.raises(DeviceError, match=r"device '.*': unknown device \(use auto, cpu, cuda"):
        resolve_device(spec)


def test_device_error_is_a_value_error():
    assert issubclass(DeviceError, ValueError)


# ------------------------------------------------------------------ init_distributed


def _fake_torchrun(monkeypatch, rank: int, world: int, local: int) -> dict:
    from dpa3.train import distributed

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local))
    calls: dict = {}
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda **kw: calls.setdefault("group", kw)
    )
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    return calls


def test_torchrun_auto_with_gpus_uses_nccl_and_the_local_gpu(monkeypatch, two_gpus):
    from dpa3.train.distributed import DistContext, init_distributed

    calls = _fake_torchrun(monkeypatch, rank=5, world=6, local=3)
    ctx, dev = init_distributed("auto")
    assert dev == torch.device("cuda", 1)
    assert calls["set_device"] == torch.device("cuda", 1)
    assert calls["group"]["backend"] == "nccl"
    assert (calls["group"]["rank"], calls["group"]["world_size"]) == (5, 6)
    assert ctx == DistContext(5, 6, 3)


def test_torchrun_without_gpu_uses_gloo_on_cpu(monkeypatch, no_gpu):
    from dpa3.train.distributed import init_distributed

    calls = _fake_torchrun(monkeypatch, rank=1, world=2, local=1)
    _, dev = init_distributed("auto")
    assert dev == torch.device("cpu")
    assert calls["group"]["backend"] == "gloo" and "set_device" not in calls
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        init_distributed("cuda")


def test_single_process_resolves_too(monkeypatch, no_gpu):
    from dpa3.train.distributed import DistContext, init_distributed

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed("auto") == (DistContext(), torch.device("cpu"))
    with pytest.raises(DeviceError, match="unknown device"):
        init_distributed("gpu")
