#!/usr/bin/env bash
# One-command GPU check for a lent device machine (no network there; torch, transformers and
# sentence-transformers are preinstalled). Runs from the repo root:
#   bash benchmarks/gpu_check.sh            (device tool: run(command="bash benchmarks/gpu_check.sh", timeout_s=540))
# 1) parity on the GPU: every pooling path (tiny checkpoints vs transformers, fp32), packed vs padded,
#    FlashAttention varlen vs per-sequence SDPA (bf16)
# 2) attention kernels: padded SDPA vs packed, bert-base heads
# 3) bert-base shape, random weights, 512-token inputs, bf16: FLOP/s as a fraction of peak
# 4) the same model with ~32-token inputs: tokens/s
# 5) mixed lengths 8..512: packed vs padded batches
# 6) sparse, multi-vector and image-text heads on the device (bf16) vs the CPU in fp32
# DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh   runs the same steps, shrunk, on a CPU (a dry run).
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 POOLKIT_COMPILE=off
DEVICE=${DEVICE:-cuda}
PEAK=${PEAK_TFLOPS:-790}   # H100/H200 SXM dense bf16 (989 spec; ~790 is what cuBLAS sustains)
N512=8192; N32=65536; NMIX=8192; SHAPE=bert-base
if [ "${SMALL:-0}" = 1 ]; then N512=64; N32=512; NMIX=256; SHAPE=minilm; fi
PY=${PYTHON:-python3}
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; fi
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
$PY -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_parity_tiny.py tests/test_api.py tests/test_packing.py 2>&1 | tail -8
$PY benchmarks/bench_attention.py --device "$DEVICE" --heads 12 --head-dim 64 --tokens 65536
BENCH="$PY benchmarks/bench_throughput.py --random-model $SHAPE --device $DEVICE --dtype bfloat16 --max-len 512 --peer none --peak-tflops $PEAK"
$BENCH --fixed-len 512 --texts $N512 --budget 65536
$BENCH --fixed-len 32 --texts $N32 --budget 65536
for packing in on off; do $BENCH --lengths 8:510 --texts $NMIX --budget 65536 --packing $packing; done
# 6) sparse (SPLADE, BGE-M3), multi-vector (query expansion: partial keys) and CLIP heads on the device vs CPU fp32
$PY benchmarks/device_parity.py --device "$DEVICE"
