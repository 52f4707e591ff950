"""Shared by the GPU check (``benchmarks/gpu_check.py``) and its workers: paths, subprocesses
with timeouts, the time budget and device-memory sampling. Standard library only."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARITY = ROOT / "tests" / "data" / "parity"
WATER = ROOT / "examples" / "lammps" / "data.water"
KEYS = ("energy", "force", "virial", "atom_energy", "atom_virial")
MD_STEPS = 20
GIB = 1024**3


# --------------------------------------------------------------------------- subprocesses


def run(
    cmd: list,
    log: Path,
    timeout: float,
    env: dict | None = None,
    cwd: Path | None = None,
    poll=None,
) -> tuple[int, str]:
    """Run ``cmd`` with its output in ``log``; (exit code, output). 124 on timeout.

    ``poll(pid)`` is called every 0.1 s while it runs (memory sampling)."""
    e = dict(os.environ)
    e.pop("LAMMPS_PLUGIN_PATH", None)
    e.update(env or {})
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=e,
            cwd=cwd,
            start_new_session=True,
        )
        t0 = time.monotonic()
        rc = None
        while rc is None:
            try:
                rc = proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                if poll is not None:
                    poll(proc.pid)
                if time.monotonic() - t0 > timeout:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                    rc = 124
    text = log.read_text(errors="replace")
    return rc, text


def tail(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines[-n:])[:240]


def last_json(text: str) -> dict | None:
    for ln in reversed(text.splitlines()):
        if ln.startswith("{"):
            try:
                return json.loads(ln)
            except json.JSONDecodeError:
                return None
    return None


class Deadline:
    def __init__(self, at: float) -> None:
        self.at = at

    def left(self) -> float:
        return self.at - time.time()

    def limit(self, want: float) -> float:
        return max(5.0, min(want, self.left()))


# --------------------------------------------------------------------------- device memory


class DeviceMemory:
    """Memory in use on GPU 0 through NVML (the driver's libnvidia-ml; no nvidia-smi needed),
    or, without NVML, nothing. ``used()`` in bytes or None."""

    class _Info(ctypes.Structure):
        _fields_ = [
            ("total", ctypes.c_ulonglong),
            ("free", ctypes.c_ulonglong),
            ("used", ctypes.c_ulonglong),
        ]

    def __init__(self) -> None:
        self.handle = None
        try:
            self.nvml = ctypes.CDLL("libnvidia-ml.so.1")
            if self.nvml.nvmlInit_v2() != 0:
                return
            h = ctypes.c_void_p()
            if self.nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h)) == 0:
                self.handle = h
        except OSError:
            pass

    def used(self) -> int | None:
        if self.handle is None:
            return None
        info = self._Info()
        if self.nvml.nvmlDeviceGetMemoryInfo(self.handle, ctypes.byref(info)) != 0:
            return None
        return int(info.used)


def tree_rss(root: int) -> int:
    """Summed resident set of process ``root`` and its descendants, bytes."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def fmt_mem(b: int | None) -> str:
    return "n/a" if b is None else f"{b / GIB:.2f} GiB"
