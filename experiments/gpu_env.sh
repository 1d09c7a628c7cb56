# Sourced by the prepared GPU checks (gpu_check.sh, gpu_quant.sh, gpu_generate.sh): the wheels carried in .whl/
# when the device lacks a library (docs/benchmarks.md lists them), weightshop's sources on the path, the
# allocator setting a 24 GB card wants (segments grow instead of per-size blocks), $OUT, and which GPU this is.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
OUT="${OUT:-weightshop-out}"; mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
