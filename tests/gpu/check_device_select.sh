#!/bin/bash
# GPU check of device selection (--device auto, DPA3Calculator) and of the exchange of CUDA
# features between 2 MPI ranks (host routing below MPI_THREAD_SERIALIZED, staging above).
# Every step reports; none stops the rest. On a GPU machine with python3 + CUDA torch, cmake,
# ninja and mpi4py but no MPI library: carry the mpich wheel's pieces from the CPU venv,
#   .venv/lib/libmpi.so.12 .venv/lib/mpich .venv/include .venv/bin/mpiexec.hydra
#   .venv/bin/hydra_pmi_proxy
# and run `bash tests/gpu/check_device_select.sh` (about 3-5 minutes, most of it the build).
cd "$(dirname "$0")/../.."
R=$PWD
PY=$(command -v python3)
export OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
nvidia-smi -L
$PY -c "import torch, numpy, mpi4py; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.device_count(), 'mpi4py', mpi4py.__version__)"
echo "== 1: Python device selection (no op library yet) =="
PYTHONPATH=$R/python timeout 200 $PY tests/gpu/device_select_python.py 2>&1 | grep -v "^DPA3 INFO  *\(batch\|step\|  \)" | tail -40
echo "== 2: op library with CUDA and MPI =="
t0=$(date +%s)
cmake -S . -B /tmp/bgpu -G Ninja -DPython_EXECUTABLE=$PY -DDPA3_BUILD_LAMMPS_PLUGIN=OFF \
  -DDPA3_ENABLE_CUDA=ON -DDPA3_MPI_INCLUDE_DIR=$R/.venv/include \
  -DDPA3_MPI_LIBRARY=$R/.venv/lib/libmpi.so.12 > /tmp/cfg.log 2>&1 || tail -30 /tmp/cfg.log
grep "dpa3:" /tmp/cfg.log
timeout 300 cmake --build /tmp/bgpu -j16 > /tmp/build.log 2>&1 || tail -60 /tmp/build.log
echo "build: $(( $(date +%s) - t0 )) s"
lib=$(find /tmp/bgpu -name libdpa3_ops.so | head -1)
mkdir -p python/dpa3/lib && cp "$lib" python/dpa3/lib/ && ls -la python/dpa3/lib
export LD_LIBRARY_PATH=$R/.venv/lib:${LD_LIBRARY_PATH:-}
export PATH=$R/.venv/bin:$PATH
export PYTHONPATH=$R/python
$PY -c "
import torch; from dpa3 import _ops; print('ops loaded', _ops.load_ops(), 'mpi', torch.ops.dpa3.enable_mpi())
print('exchange_mode no comm, cuda:', torch.ops.dpa3.exchange_mode(torch.zeros(1, dtype=torch.long), torch.device('cuda', 0)))"
echo "== 3: exchange of CUDA features on 2 ranks =="
for lvl in funneled serialized multiple; do
  DPA3_CUDA_AWARE=0 timeout 90 mpiexec.hydra -np 2 $PY tests/gpu/device_select_exchange.py $lvl 2>&1 | tail -12
done
echo "== done =="
