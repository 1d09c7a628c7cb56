#!/usr/bin/env bash
# The prepared GPU check for generation (issue 22): full-size Krea 2 with random weights at 1024 x 1024, in one call
# that ends within 8 minutes (DEADLINE_S, 450 s, leaves room for the machine's own start and the transfers).
#
# 1. Turbo's preset, `generate` against stock diffusers Krea2Pipeline.__call__ on the same weights in the same run,
#    per configuration: padded text, the defaults (then at batch 2), fp8 matmuls with CUDA graphs / regional compile
#    (the fp8 goal, <= 0.8 s per image), CUDA graphs, regional compile, fp8 matmuls, int8 matmuls, fp8 / int8
#    weights; the image checks (weightshop's loop vs stock, trimmed vs padded text, every row's image against the
#    first eager/padded one); Raw's first-block step cache on 12 guided steps; the memory profile; model offload
#    last. No section starts after BUDGET_S (210 s); the JSON is rewritten after every row.
# 2. Raw at its own preset (52 guided steps; the goal: <= 2x its FLOP limit, `flop_limit.raw_bf16_s`), the defaults
#    and unbatched guidance, one repeat each, in what is left of DEADLINE_S (RAW_CONFIG_S, 80 s, kept for the last
#    configuration to finish). Its JSON: gpu_generate_raw.json.
# Each run is killed at the deadline (`timeout`), keeping the rows its JSON already has.
#
# On a machine without diffusers/transformers, carry their wheels in .whl/ (see docs/benchmarks.md).
# NANO=1 runs the same path at krea2-nano size on the CPU (tests/test_gpu_scripts.py).
set -u
source "$(dirname "$0")/gpu_env.sh"
PY="${PYTHON:-python3}"
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" || exit 1
DEADLINE_S="${DEADLINE_S:-450}"
if [ -n "${NANO-}" ]; then
  TURBO=(--model krea2-nano-turbo --raw-model krea2-nano-raw --device cpu --configs "${CONFIGS:-eager}" --batches 1
         --repeats 1 --warmup 0 --raw-steps 2 --cache-thresholds 0.3 --budget-s "${BUDGET_S:-300}")
  RAW=(--model krea2-nano-turbo --raw-model krea2-nano-raw --device cpu)
else
  TURBO=(--full-size
         --configs "${CONFIGS:-padded,eager,fp8-mm+cuda-graphs,cuda-graphs,fp8-mm+compile,compile,fp8-mm,int8-mm,fp8,int8,offload-model}"
         --batches "${BATCHES:-1,2}" --repeats 2 --warmup 1 --raw-steps 12 --cache-thresholds 0.1,0.3
         --budget-s "${BUDGET_S:-210}")
  RAW=(--full-size)
fi
run() {  # run NAME ARGS...: one bench run, killed at the deadline; its stderr kept beside its JSON
  local name=$1 left=$((DEADLINE_S - SECONDS))
  shift
  if [ "$left" -lt 30 ]; then
    echo "$name: not started, $left s left of DEADLINE_S"
    return 124
  fi
  timeout -k 10 "$left" "$PY" -m weightshop.bench.generate "$@" --out "$OUT/$name.json" 2>"$OUT/$name.err"
  local rc=$?
  grep -v -i "warn\|USDT\|profiler\|Loading weights" "$OUT/$name.err" | tail -20
  [ "$rc" -eq 124 ] && echo "$name: stopped at the deadline (the JSON keeps the rows measured)"
  return $rc
}
run gpu_generate "${TURBO[@]}" --memory-profile
rc=$?
raw_budget=$((DEADLINE_S - SECONDS - ${RAW_CONFIG_S:-80}))
run gpu_generate_raw "${RAW[@]}" --checkpoint raw --configs eager,unbatched --batches 1 --repeats 1 --warmup 0 \
  --cache-thresholds "" --no-stock-checks --budget-s "$((raw_budget > 0 ? raw_budget : 0))"
raw_rc=$?
exit $((rc != 0 ? rc : raw_rc))
