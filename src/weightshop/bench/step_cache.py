"""The first-block step cache's speed-up and drift, measured by the eval judges on a suite (issue 22).

The bench's step-cache rows (`bench.generate.step_cache_rows`) compare one image's pixels; this renders a whole
suite on a Raw model with and without the cache, through `eval.harness.evaluate` (the judges that gate LoRAs), and
pairs each image with the uncached one of the same prompt and seed, as the quantization drift report does
(`eval.drift.drift_row`): paired PSNR / SSIM, the feature distance, and every judge metric gated (the probe's
adherence among them). A threshold passes when the gate does. Speed-up: seconds per image without / with.

    python -m weightshop.bench.step_cache --thresholds 0.05,0.1,0.2 --out weightshop-out/step_cache.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path


def step_cache_drift(model, thresholds: list[float], out_dir: str | Path, *, suite=None, judges: list | None = None,
                     features: bool = True, tolerances: dict[str, float] | None = None) -> dict:
    """Render `suite` (default: krea2-nano's 'star' suite) on `model` without the step cache and at each threshold;
    one drift row per threshold against the uncached run. `judges` None: `eval.lora.default_judges` (the probe
    and geometry judges on krea2-nano)."""
    from weightshop.eval.drift import drift_row
    from weightshop.eval.harness import evaluate
    from weightshop.generate.fast import FastPath, stage_clock
    from weightshop.models.placement import execution_device

    out_dir = Path(out_dir)
    skipped: list[str] = []
    if suite is None:
        from weightshop.eval.suites import nano_suite

        suite = nano_suite("star")
    if judges is None:
        from weightshop.eval.lora import default_judges

        judges, skipped = default_judges(Path(model.source.transformer), suite, "star", None, real=False)
    common = dict(judges=judges, cache_dir=out_dir / "image-cache", features=features, ocr=False)
    device = execution_device(model.pipeline)
    reference = evaluate(model, suite, out_dir / "runs" / "no-cache", **common)
    rows = []
    for threshold in thresholds:
        with stage_clock(device) as clock:  # how many steps the cache answered (of the images rendered now)
            run = evaluate(model, suite, out_dir / "runs" / f"cache-{threshold:g}",
                           fast=FastPath(step_cache=threshold), **common)
        row = asdict(drift_row(f"step cache {threshold:g}", reference, run, tolerances=tolerances, worst_k=3))
        row.pop("gate", None)
        row["threshold"] = threshold
        row["cached_steps"], row["steps_run"] = clock.cached_steps, len(clock.steps)
        row["speedup"] = (reference.seconds_per_image / run.seconds_per_image
                          if reference.seconds_per_image and run.seconds_per_image else None)
        rows.append(row)
    return {"model": model.name, "checkpoint": model.checkpoint.name, "suite": suite.name,
            "images": len(reference.images), "steps": model.checkpoint.preset.steps,
            "seconds_per_image_no_cache": reference.seconds_per_image, "judges": [j.name for j in judges],
            "skipped": skipped, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    import torch

    from weightshop.eval.suites import nano_suite
    from weightshop.io import atomic_write_json
    from weightshop.models.loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="krea2-nano-raw")
    parser.add_argument("--thresholds", default="0.05,0.1,0.2")
    parser.add_argument("--subject", type=int, default=24, help="Subject prompts of the suite (nano_suite)")
    parser.add_argument("--plain", type=int, default=12, help="Plain prompts of the suite")
    parser.add_argument("--workdir", default="weightshop-out/step-cache")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    model = load_model(args.model, dtype="auto", device="cuda" if torch.cuda.is_available() else "cpu")
    report = step_cache_drift(model, [float(t) for t in args.thresholds.split(",") if t], args.workdir,
                              suite=nano_suite("star", args.subject, args.plain))
    report["torch"] = torch.__version__
    print(report)
    if args.out:
        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
