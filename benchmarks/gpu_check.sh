#!/usr/bin/env bash
# The GPU checks, as one prepared command for a session that is lent a GPU machine (the device
# tool; its python3 has PyTorch with CUDA, numpy, pytest, scikit-learn, matplotlib and
# onnxruntime; dlrmkit runs from src/ with the numpy parser, no build needed). MLPerf LoadGen is
# not in that image: fetch its wheel here first, into .whl/ (ignored by git), and carry it:
#
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 -d .whl mlcommons-loadgen==6.0.17
#
# then, on the device machine (run with carry [".whl"]), in the repository root:
#
#   bash benchmarks/gpu_check.sh            # about 6-8 minutes on one H100
#
# 1. tests/test_gpu.py: CUDA predictions against the CPU's (FP32, int8 tables, bf16 MLPs, eager
#    and torch.compile), the hot tier on the GPU with cold rows in pinned host memory, `dlrmkit
#    bench --device cuda` through LoadGen (accuracy against the CPU run; Offline and Server with
#    the hot tier), NCCL training against one CPU process, its exact resume, and its checkpoint
#    evaluated on CPU; ONNX Runtime on CUDA where onnxruntime-gpu is installed. Without the
#    wheel the bench tests skip.
# 2. benchmarks/bench_inference.py --device cuda: every torch variant without int8 MLPs, kaggle and
#    terabyte shapes, 1M rows per table, batch 65,536.
# Logs and the JSON go to $OUT (the device tool brings them back), else /tmp/gpu_check. Each step
# has its own time limit, so one that hangs leaves the other's output. Locally, DEVICE=cpu
# PYTHON=.venv/bin/python ROWS=1000 BATCH=256 runs the same plumbing on the CPU.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
mkdir -p "$out"
site=
if ! "$py" -c "import mlperf_loadgen" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  site=/tmp/gpu_check_site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_check: the carried wheels do not install"; exit 2; }
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
  | tee "$out/device.txt"
"$py" -c "import mlperf_loadgen; print('loadgen', mlperf_loadgen.__file__)" 2>&1 | tail -1 | tee -a "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$out/device.txt"

timeout "${TEST_SECONDS:-330}" "$py" -m pytest -v -ra --durations=0 -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
tests=$?
timeout "${BENCH_SECONDS:-210}" "$py" benchmarks/bench_inference.py --device "$device" --shapes kaggle,terabyte \
  --rows-per-table "${ROWS:-1000000}" --batch-size "${BATCH:-65536}" --threads "$(nproc)" --steps 10 --repeats 3 \
  --json "$out/bench_inference_$device.json" 2>&1 | tee "$out/bench_inference_$device.log"
bench=$?
echo "gpu_check: tests exit $tests, benchmark exit $bench"
exit $((tests || bench))
