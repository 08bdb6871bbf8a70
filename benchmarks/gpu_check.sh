#!/usr/bin/env bash
# One-command GPU check for a lent device machine (no network there; torch, transformers and
# sentence-transformers are preinstalled). Runs from the repo root:
#   bash benchmarks/gpu_check.sh            (device tool: run(command="bash benchmarks/gpu_check.sh", timeout_s=540))
# 1) parity of every pooling path on the GPU (tiny checkpoints vs transformers, fp32)
# 2) bert-base shape, random weights, 512-token inputs, bf16: FLOP/s as a fraction of peak
# 3) the same model with ~32-token inputs: tokens/s
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 POOLKIT_COMPILE=off
PEAK=${PEAK_TFLOPS:-790}   # H200/H100 dense bf16 as measured on these machines
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_parity_tiny.py tests/test_api.py 2>&1 | tail -3
python3 benchmarks/bench_throughput.py --random-model bert-base --device cuda --dtype bfloat16 \
    --fixed-len 512 --max-len 512 --texts 8192 --budget 65536 --peer none --peak-tflops "$PEAK"
python3 benchmarks/bench_throughput.py --random-model bert-base --device cuda --dtype bfloat16 \
    --fixed-len 32 --max-len 512 --texts 65536 --budget 65536 --peer none --peak-tflops "$PEAK"
