"""Guarded subprocess runs for the benchmarks: a command killed when it runs too long or the
machine runs low on memory, with the peak resident memory of its whole process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from lammps_report import GIB, meminfo


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss(pids: list[int]) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_guarded(
    cmd: list[str], case_dir: Path, env: dict[str, str], *, timeout: float, min_free: int
) -> tuple[int, str | None, int, float]:
    """Run ``cmd`` in ``case_dir`` (output to ``stdout``/``stderr`` there), killing it when it
    exceeds ``timeout`` seconds or the machine's available memory falls below ``min_free``.

    Returns the exit code, the reason it was stopped (None if not), the largest summed
    resident set of its processes seen while polling, and the wall time.
    """
    guard_peak = 0
    stop = None
    t0 = time.perf_counter()
    with open(case_dir / "stdout", "w") as out, open(case_dir / "stderr", "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=case_dir, env=env, stdout=out, stderr=err, start_new_session=True
        )
        while proc.poll() is None:
            time.sleep(0.2)
            pids = descendants(proc.pid)
            guard_peak = max(guard_peak, rss(pids))
            if time.perf_counter() - t0 > timeout:
                stop = f"timeout (> {timeout:.0f} s)"
            elif meminfo()["MemAvailable"] < min_free:
                stop = (
                    f"out of memory (stopped at {guard_peak / GIB:.1f} GB, machine "
                    f"below {min_free / GIB:.1f} GB free)"
                )
            if stop:
                for pid in reversed(pids):  # only the processes this run started
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                break
    return proc.returncode, stop, guard_peak, time.perf_counter() - t0
