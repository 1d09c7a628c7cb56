#!/usr/bin/env bash
# The prepared GPU check for LoRA training (issue 5): full-size Krea 2 (12.8 B) with random weights, the
# trainer's own step, seconds per step and peak VRAM at 512 and 1024 px for a bf16, fp8, fp8-mm and int8 frozen
# base with gradient checkpointing, then fp8-mm and bf16 with regional torch.compile at 1024 px, then fp8-mm +
# compile again under a 24 GB card's memory. One command, about 5 minutes on an H100 (under 8).
#
# On a machine without diffusers/peft, carry their wheels in .whl/ (see docs/benchmarks.md).
set -u
source "$(dirname "$0")/gpu_env.sh"
python3 -c "import torch, diffusers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)"
# the float8 matmul's error against bf16 at a full-size block shape, before anything is timed
python3 - <<'PY' || exit 1
import torch
from weightshop.quant.layers import Float8MatmulLinear
torch.manual_seed(0)
lin = torch.nn.Linear(6144, 16384, device="cuda", dtype=torch.bfloat16)
x = torch.randn(4608, 6144, device="cuda", dtype=torch.bfloat16, requires_grad=True)
ref = lin(x); g = torch.randn_like(ref); ref.backward(g); gref = x.grad; x.grad = None
y = Float8MatmulLinear.convert(lin, torch.bfloat16)(x); y.backward(g)
err = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
print(f"fp8-mm vs bf16: output rel. error {err(y, ref):.4f}, input-gradient rel. error {err(x.grad, gref):.4f}")
PY
python3 -m weightshop.bench.train_step --full-size --resolutions "${RESOLUTIONS:-512,1024}" --bases "${BASES:-bf16,fp8,fp8-mm,int8}" \
  --compile-at "${COMPILE_AT:-fp8-mm,bf16}" --steps 5 --warmup 2 --budget-s "${BUDGET_S:-360}" --out "$OUT/gpu_train.json" 2>"$OUT/gpu_train.err"
rc=$?
grep -v -i "warn" "$OUT/gpu_train.err" | tail -20
# the fastest configuration again, allowed only a 24 GB card's memory (what a 4090 leaves free: 23.5 GiB)
if [ -n "${CAP_GIB-23.5}" ]; then
  python3 -m weightshop.bench.train_step --full-size --resolutions 1024 --bases "" --compile-at fp8-mm \
    --memory-cap-gib "${CAP_GIB-23.5}" --steps 5 --warmup 2 --out "$OUT/gpu_train_capped.json" 2>"$OUT/gpu_train_capped.err" || rc=$?
  grep -v -i "warn" "$OUT/gpu_train_capped.err" | tail -5
fi
exit $rc
