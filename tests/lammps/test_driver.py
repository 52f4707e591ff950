"""The LAMMPS test driver itself: a timed-out run leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import lmp_driver as L
import pytest

# a parent that starts a child (as mpirun starts ranks), prints the child's pid, then hangs
HANG = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_timeout_kills_the_whole_process_group(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired) as info:
        L.run_process_group([sys.executable, "-c", HANG], tmp_path, dict(os.environ), 3.0)
    child = int(info.value.output.split()[0])
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(child), f"child {child} of the timed-out run is still running"
