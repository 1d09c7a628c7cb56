#!/usr/bin/env bash
# The prepared GPU check for LoRA training (issue 5): full-size Krea 2 (12.8 B) with random weights, the
# trainer's own step, seconds per step and peak VRAM at 512 and 1024 px for a bf16, fp8 and int8 frozen base
# with gradient checkpointing, then fp8 and bf16 with regional torch.compile. One command, under 8 minutes.
#
# On a machine without diffusers/peft/torchao, carry their wheels in .whl/ (see docs/benchmarks.md).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1
OUT="${OUT:-weightshop-out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, peft, torchao; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'torchao', torchao.__version__)"
python3 -m weightshop.bench.train_step --full-size --resolutions 512,1024 --bases bf16,fp8,int8 \
  --compile-at fp8,bf16 --steps 5 --warmup 2 --budget-s "${BUDGET_S:-360}" --out "$OUT/gpu_train.json" 2>"$OUT/gpu_train.err"
rc=$?
grep -v -i "warn" "$OUT/gpu_train.err" | tail -20
exit $rc
