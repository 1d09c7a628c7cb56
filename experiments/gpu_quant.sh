#!/usr/bin/env bash
# The prepared GPU check for quantization (issue 20): experiments/gpu_quant.py at full size on one GPU, every
# format, one JSON. About 5 minutes on an H100 (under 8). Carry the wheels the device lacks in .whl/
# (docs/benchmarks.md says which: diffusers, peft, gguf, pydantic).
set -u
source "$(dirname "$0")/gpu_env.sh"
python3 experiments/gpu_quant.py --formats "${FORMATS:-bf16,fp8,fp8-channel,int8,q8_0,q4_0,q4_k}" --size "${SIZE:-1024}" \
  --out "$OUT/gpu_quant.json" 2>"$OUT/gpu_quant.err"
rc=$?
grep -v -i "warn" "$OUT/gpu_quant.err" | tail -20
exit $rc
