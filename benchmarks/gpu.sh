#!/usr/bin/env bash
# GPU benchmark (CUDA or ROCm), no internet needed, under 8 minutes on a data-centre GPU:
# a Qwen3-1.7B-shaped model with random bf16 weights, LoRA training at the reference recipe's shape
# (batch 4 x accumulation 4, 256 tokens), and the evaluation scorer against generate-8 at batch 1.
# First a gradient check: one optimizer step of the default training path (lean autograd, step prefix,
# fused head) against the plain path, in fp16 with a GradScaler, bf16 and fp32 (exits 1 on FAIL).
#   bash benchmarks/gpu.sh                 # on the GPU machine
#   SHAPE=tiny bash benchmarks/gpu.sh      # quick check of the script on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1 PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu', getattr(torch.version, 'hip', None) or '')"
timeout 480 "$PY" benchmarks/gpu_bench.py --shape "${SHAPE:-qwen3-1.7b}" --steps "${STEPS:-10}" "$@"
