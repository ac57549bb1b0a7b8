#!/usr/bin/env bash
# GPU checks of the base tier, for a GPU machine with PyTorch + CUDA (no Feast, no network).
# Runs in about 3-5 minutes on an H100:
#   1. bench/train.py on CUDA: bare PyTorch loop vs the Ray Train job, same model and data;
#   2. the GPU-marked tests: the real base_model.train path (Ray Train TorchTrainer, use_gpu)
#      then scoring the registered artifact on CPU.
# Ray is not in the GPU image: bring the wheels (the GPU-wheels script into .whl/, then carry
# .whl/) or have `import ray` work already. Logs and the bench JSON go to $OUT (default
# /tmp/freshrank-gpu-out). Usage: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/freshrank-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if ! $PY -c "import ray" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/freshrank-site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/freshrank-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "ray is not importable and .whl/ has no wheels (build them with the GPU-wheels script)"; exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch, ray, pyarrow, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__, 'pyarrow', pyarrow.__version__, 'numpy', numpy.__version__); print('cuda available', torch.cuda.is_available())"
  nproc
} 2>&1 | tee "$OUT/gpu_env.txt"

status=0
# 1. Throughput: the JSON object is the last line of bench_train_gpu.log (also bench_train_gpu.json).
timeout 240 $PY bench/train.py --device cuda --rows 4000000 --users 200000 --items 50000 \
    --batch-size 8192 --epochs 4 --embedding-dim 32 --hidden 128,64 2>&1 | tee "$OUT/bench_train_gpu.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
tail -n 1 "$OUT/bench_train_gpu.log" > "$OUT/bench_train_gpu.json"

# 2. The real training path on the GPU (TorchTrainer use_gpu) and every GPU-marked test.
timeout 180 $PY -m pytest -q -m gpu tests/base_model -p no:cacheprovider -rA 2>&1 | tee "$OUT/pytest_gpu.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "gpu_check status: $status (logs in $OUT)"
exit $status
