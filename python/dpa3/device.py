"""Choice of the torch device: ``auto``, ``cpu`` or ``cuda`` (``dpa3 train/test --device``,
``DPA3Calculator(device=...)``).

``auto`` (the default everywhere) picks a CUDA GPU when torch sees one and the CPU otherwise.
Under ``torchrun`` each rank takes the GPU ``LOCAL_RANK mod (visible GPUs)``.  Nothing here
runs at import time: the device is resolved when a command or a calculator starts.
"""

from __future__ import annotations

import logging

import torch

from .errors import DeviceError

log = logging.getLogger(__name__)

#: The values a device option accepts (``cuda:N`` names one GPU explicitly).
CHOICES = ("auto", "cpu", "cuda")


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return "torch.cuda.is_available() is False (no GPU, or CUDA_VISIBLE_DEVICES hides them)"


def resolve_device(
    spec: str | torch.device, local_rank: int | None = None, option: str = "device"
) -> torch.device:
    """The torch device that ``spec`` stands for.

    Parameters
    ----------
    spec
        ``"auto"`` (CUDA if a GPU is visible, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
        a :class:`torch.device`.
    local_rank
        The node-local rank under ``torchrun`` (``LOCAL_RANK``): ``auto`` and ``cuda`` then
        give ``cuda:(local_rank mod device_count)``.  ``None``: ``cuda`` (torch's current GPU).
    option
        How the option is called in error messages (``"--device"``, ``"device"``).

    Raises
    ------
    DeviceError
        For an unknown value, or for CUDA when no CUDA device is visible.
    """
    text = str(spec).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in CHOICES or (index and (kind != "cuda" or not index.isdigit())):
        raise DeviceError(f"{option} '{spec}': unknown device (use {', '.join(CHOICES)} or cuda:N)")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        dev = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise DeviceError(f"{option} '{spec}': no CUDA device is visible ({_no_cuda_reason()})")
        count = torch.cuda.device_count()
        if index:
            if int(index) >= count:
                raise DeviceError(
                    f"{option} '{spec}': there are only {count} visible CUDA device(s)"
                )
            dev = torch.device("cuda", int(index))
        elif local_rank is not None:
            dev = torch.device("cuda", local_rank % count)
        else:
            dev = torch.device("cuda")
    log.debug("%s %s -> %s", option, spec, dev)
    return dev


def describe(spec: str | torch.device, dev: torch.device) -> str:
    """One line for the log: the device chosen, and why when ``spec`` was ``auto``."""
    if str(spec).strip().lower() != "auto":
        return f"device {dev}"
    if dev.type == "cuda":
        return f"device {dev} (auto: {torch.cuda.device_count()} CUDA device(s) visible)"
    return f"device {dev} (auto: no CUDA device visible)"


__all__ = ["CHOICES", "DeviceError", "describe", "resolve_device"]
