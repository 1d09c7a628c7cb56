#!/usr/bin/env bash
# The prepared GPU check for quantization (issue 20): experiments/gpu_quant.py at full size on one GPU, every
# format, one JSON. About 5 minutes on an H100 (under 8). Carry the wheels the device lacks in .whl/
# (docs/benchmarks.md says which: diffusers, peft, gguf, pydantic).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
OUT="${OUT:-weightshop-out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 experiments/gpu_quant.py --formats "${FORMATS:-bf16,fp8,fp8-channel,int8,q8_0,q4_0,q4_k}" --size "${SIZE:-1024}" \
  --out "$OUT/gpu_quant.json" 2>"$OUT/gpu_quant.err"
rc=$?
grep -v -i "warn" "$OUT/gpu_quant.err" | tail -20
exit $rc
