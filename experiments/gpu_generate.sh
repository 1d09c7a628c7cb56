#!/usr/bin/env bash
# The prepared GPU check for generation (issue 22): full-size Krea 2 with random weights at 1024 x 1024, Turbo's
# preset, `generate` against stock diffusers Krea2Pipeline.__call__ on the same weights in the same run, per
# configuration (padded text, the defaults, regional compile, fp8 matmuls, CUDA graphs, int8 matmuls, fp8 / int8
# weights, model offload), the memory profile (peak by stage, the allocator's record as JSON), the
# default configuration at batch 2, the image checks (weightshop's loop vs stock, trimmed vs padded text), and Raw's
# first-block step cache on 12 guided steps. One command, one JSON (+ a PNG plot), about 5 minutes on an H100
# (under 8: no configuration starts after BUDGET_S).
#
# On a machine without diffusers/transformers, carry their wheels in .whl/ (see docs/benchmarks.md).
# NANO=1 runs the same path at krea2-nano size on the CPU (tests/test_gpu_scripts.py).
set -u
source "$(dirname "$0")/gpu_env.sh"
PY="${PYTHON:-python3}"
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" || exit 1
if [ -n "${NANO-}" ]; then
  ARGS=(--model krea2-nano-turbo --raw-model krea2-nano-raw --device cpu --configs "${CONFIGS:-eager}" --batches 1
        --repeats 1 --warmup 0 --raw-steps 2 --cache-thresholds 0.3)
else
  ARGS=(--full-size --configs "${CONFIGS:-padded,eager,compile,fp8-mm,cuda-graphs,int8-mm,fp8,int8,offload-model}"
        --batches "${BATCHES:-1,2}" --repeats 2 --warmup 1 --raw-steps 12 --cache-thresholds 0.1,0.3
        --budget-s "${BUDGET_S:-330}")
fi
"$PY" -m weightshop.bench.generate "${ARGS[@]}" --memory-profile --out "$OUT/gpu_generate.json" \
  2>"$OUT/gpu_generate.err"
rc=$?
grep -v -i "warn\|USDT\|profiler" "$OUT/gpu_generate.err" | tail -20
exit $rc
