"""Seconds per training step and peak memory of the LoRA trainer's own step, on random weights.

Speed and memory do not depend on the weight values, so a full-size Krea 2 transformer with random weights
(built on the meta device, materialised straight on the GPU in bf16) measures what the real 12.8 B
checkpoint costs, with no download. The step is weightshop's, set up by `train.synthetic.trainer_step` (the
one `weightshop plan` calibrates against) from a `TrainConfig`: the trainer's own setup (`train.setup.prepare`)
and step (`train.step.take_step`).

    python -m weightshop.bench.train_step --full-size --resolutions 512,1024 --bases bf16,fp8,int8
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time

import torch

def bench_config(base: str, *, rank: int = 32, targets: str = "krea-default", checkpointing: bool = True,
                 compile: bool = False, batch_size: int = 1):
    """The run config a benchmark row times: bf16 weights under bf16 autocast, the frozen base stored as `base`."""
    from weightshop.train.config import load_config

    return load_config(base={
        "data": {"manifest": "(synthetic)"}, "model": {"dtype": "bf16"},
        "lora": {"rank": rank, "targets": targets},
        "schedule": {"batch_size": batch_size},
        "memory": {"gradient_checkpointing": checkpointing, "autocast": "bf16",
                   "base_dtype": "none" if base == "bf16" else base, "compile": compile}})


def measure(resolution: int, base: str, *, config: dict | None = None, device: str = "cuda", steps: int = 5,
            warmup: int = 2, rank: int = 32, targets: str = "krea-default", checkpointing: bool = True,
            compile: bool = False, batch_size: int = 1, vae_scale: int = 8, text_tokens: int = 512,
            memory_cap_gib: float | None = None) -> dict:
    """One configuration: build, store the base, add the LoRA, time `steps` optimizer steps after `warmup`.

    `memory_cap_gib` (CUDA) lets the steps allocate no more than that, as on a smaller card: the check that a
    configuration fits, the caching allocator's slack included (the random weights are built before it applies)."""
    from weightshop.quant.layers import weight_bytes
    from weightshop.train.synthetic import trainer_step

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
    cfg = bench_config(base, rank=rank, targets=targets, checkpointing=checkpointing, compile=compile,
                       batch_size=batch_size)
    step = trainer_step(cfg, config, resolution, device=device, vae_scale=vae_scale, text_tokens=text_tokens)
    if cuda:  # the training peak, not the one-off cost of building random weights (nor the cache it left)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if memory_cap_gib:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory_cap_gib * 2**30 / total))
    times, losses = [], []
    try:
        for i in range(warmup + steps):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
            losses.append(step.last_loss)
    finally:
        if cuda and memory_cap_gib:
            torch.cuda.set_per_process_memory_fraction(1.0)
    result = {
        "resolution": resolution, "base": base, "checkpointing": checkpointing, "compile": compile,
        "batch_size": batch_size, "rank": rank, "targets": targets, "lora_modules": len(step.names),
        "lora_params": sum(p.numel() for p in step.params), "base_gib": weight_bytes(step.model) / 2**30,
        "s_per_step": sorted(times)[len(times) // 2], "s_per_step_all": times,
        "grad_norm": step.last_grad_norm, "loss_finite": all(math.isfinite(x) for x in losses),
        "image_tokens": (resolution // vae_scale // 2) ** 2, "text_tokens": text_tokens,
    }
    add_mfu(result, config, device)
    if memory_cap_gib:
        result["memory_cap_gib"] = memory_cap_gib
    if cuda:
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    del step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def add_mfu(result: dict, config: dict | None, device: str) -> None:
    """The step's FLOPs (`models.flops`, the one FLOP model) and MFU against the device's dense bf16 peak."""
    from weightshop.models.flops import TERA, mfu, training_step_flops
    from weightshop.models.shape import full_size_shape

    work = training_step_flops(config or full_size_shape().config, result["image_tokens"], result["text_tokens"],
                               result["batch_size"], result["checkpointing"])
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    result["tflop_per_step"] = work / TERA
    result["mfu"] = mfu(work, result["s_per_step"], name)


def run_matrix(*, full_size: bool, resolutions: str = "512,1024", bases: str = "bf16,fp8,int8",
               compile_at: str = "", steps: int = 5, warmup: int = 2, budget_s: float = 420.0,
               memory_cap_gib: float | None = None, text_tokens: int | None = None, progress=None) -> dict:
    """Measure every (base, resolution), then the compiled ones; each row also gets its time as a ratio to the
    first base at the same resolution and compile setting (the baseline of this same run)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # comparable across machines; threads fight on a shared 2-core box
    from weightshop.models.shape import full_size_shape, model_shape

    shape = full_size_shape() if full_size else model_shape("krea2-nano")
    config = None if full_size else shape.config
    text_tokens = text_tokens or shape.max_sequence_length  # the model's max_sequence_length: the worst case
    sizes = [int(r) for r in resolutions.split(",")]
    names = [b for b in bases.split(",") if b]
    plan = [(r, b, False) for b in names for r in sizes] + [(sizes[-1], b, True) for b in compile_at.split(",") if b]
    began, rows = time.perf_counter(), []
    for resolution, base, compiled in plan:
        if time.perf_counter() - began > budget_s:
            rows.append({"resolution": resolution, "base": base, "compile": compiled, "skipped": "time budget"})
            continue
        try:
            row = measure(resolution, base, config=config, device=device, steps=steps, warmup=warmup,
                          compile=compiled, vae_scale=shape.vae_scale_factor, text_tokens=text_tokens,
                          memory_cap_gib=memory_cap_gib)
        except Exception as e:  # record and go on: one failing mode must not cost the others
            row = {"resolution": resolution, "base": base, "compile": compiled, "error": f"{type(e).__name__}: {e}"[:400]}
        rows.append(row)
        if progress:
            progress(row)
    baseline = {(r["resolution"]): r["s_per_step"] for r in rows
                if names and r["base"] == names[0] and not r["compile"] and "s_per_step" in r}
    for r in rows:
        if "s_per_step" in r and r["resolution"] in baseline:
            r["ratio"] = r["s_per_step"] / baseline[r["resolution"]]
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "full_size": full_size, "baseline": names[0] if names else None, "rows": rows, "seconds": time.perf_counter() - began}


def main(argv: list[str] | None = None) -> int:
    """The GPU check's entry point (experiments/gpu_check.sh): no CLI dependencies beyond argparse."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="Full Krea 2 (12.8 B); default: krea2-nano's shape")
    parser.add_argument("--resolutions", default="512,1024")
    parser.add_argument("--bases", default="bf16,fp8,int8")
    parser.add_argument("--compile-at", default="", help="Also measure these bases with regional compile (last)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=420.0, help="Stop starting new configurations after this")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="CUDA: allow the steps no more than this (a smaller card's memory); a row that does not "
                             "fit records the out-of-memory error")
    parser.add_argument("--text-tokens", type=int, default=None,
                        help="Text tokens per sample (default: the model's max_sequence_length, the worst case)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    report = run_matrix(full_size=args.full_size, resolutions=args.resolutions, bases=args.bases,
                        compile_at=args.compile_at, steps=args.steps, warmup=args.warmup, budget_s=args.budget_s,
                        memory_cap_gib=args.memory_cap_gib, text_tokens=args.text_tokens,
                        progress=lambda row: print(json.dumps(row), flush=True))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
