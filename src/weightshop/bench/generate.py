"""Seconds per image of `generate` against stock diffusers `Krea2Pipeline.__call__`, on the same weights, same run.

Every configuration times both on the same pipeline object (same weights, same quantization, same placement,
same prompts and seeds), interleaved, medians of `repeats`: the ratio stock / weightshop is the speed-up. Stages
(text encoding, each denoising step, VAE decode) come from `generate.fast.stage_clock` for weightshop and from
timing wrappers around the pipeline's encode_prompt / vae.decode and its step callback for stock. FLOPs, MFU and
the FLOP limit come from `models.flops`; peak memory from `models.memory.measure_peak`; cost per image from $/hour.

Full size needs no download: random weights of Krea 2's shapes (speed and memory do not depend on the values) and a
tokenizer trained locally (`models.tiny`).

    python -m weightshop.bench.generate --model krea2-nano-turbo --reduced          # CI, seconds
    python -m weightshop.bench.generate --full-size --out weightshop-out/gpu_generate.json   # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

PROMPT = "a red circle above a small blue square on a grey background"
NEGATIVE = "blurry"
# name -> (FastPath overrides, speed_up kwargs, quantized format, offload mode)
CONFIGS = {
    "padded": ({"trim_text": False}, {}, None, "none"),  # weightshop's loop, text padded as stock pads it
    "eager": ({}, {}, None, "none"),  # the defaults: trimmed text, cached text features, batched guidance
    "compile": ({}, {"compile": True}, None, "none"),
    "fp8-mm": ({}, {"fp8_matmul": True}, None, "none"),
    "int8-mm": ({}, {"int8_matmul": True}, None, "none"),  # int8 matmuls (torch._int_mm): GeForce cards, CPU
    "cuda-graphs": ({}, {"cuda_graphs": True}, None, "none"),  # regional compile, mode reduce-overhead
    "int8": ({}, {}, "int8", "none"),
    "fp8": ({}, {}, "fp8", "none"),
    "offload-model": ({}, {}, None, "model"),
    "offload-group": ({}, {}, None, "group"),
}
REDUCED = "padded,eager,int8,int8-mm,offload-model"
DEFAULT = "padded,eager,compile,cuda-graphs,fp8-mm,int8-mm,fp8,int8,offload-model,offload-group"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------
# Models


def random_model(checkpoint: str, device: str, dtype: torch.dtype, shared=None, offload: str = "none"):
    """Full-size Krea 2 with random weights built on the device (no download, no host copy), as a LoadedModel."""
    from diffusers import AutoencoderKLQwenImage, Krea2Transformer2DModel
    from transformers import Qwen3VLConfig, Qwen3VLModel

    from weightshop.models.loading import LoadedModel, ModelSource, SharedComponents, build_pipeline
    from weightshop.models.placement import Placement, place
    from weightshop.models.shape import full_size_component_configs, full_size_shape
    from weightshop.models.spec import KREA2
    from weightshop.models.tiny import tiny_tokenizer

    def build(fn):
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device if offload == "none" else "cpu"):
                return fn().eval()
        finally:
            torch.set_default_dtype(before)

    if shared is None:
        te, vae = full_size_component_configs()
        shared = SharedComponents(build(lambda: AutoencoderKLQwenImage.from_config(vae)),
                                  build(lambda: Qwen3VLModel(Qwen3VLConfig(**te))), tiny_tokenizer(),
                                  KREA2.text_encoder_select_layers, Path("(random weights)"))
    transformer = build(lambda: Krea2Transformer2DModel.from_config(full_size_shape().config))
    pipe = build_pipeline(transformer, shared, KREA2.checkpoint(checkpoint))
    placement = Placement(offload)
    place(pipe, device, placement)
    source = ModelSource("random", Path("(random weights)"), Path("(random weights)"), checkpoint,
                         f"krea2-{checkpoint} (random weights)")
    return LoadedModel(pipe, KREA2.checkpoint(checkpoint), source, KREA2, placement), shared


def load(model: str | None, checkpoint: str, device: str, dtype: str, offload: str, shared=None):
    """(LoadedModel, shared components to reuse) for a model name, or full-size random weights when model is None."""
    from weightshop.models.loading import resolve_dtype

    if model is None:
        return random_model(checkpoint, device, resolve_dtype(dtype, device), shared, offload)
    from weightshop.models.loading import load_model

    return load_model(model, dtype=dtype, device=device, offload=offload), None


# ---------------------------------------------------------------------------------------------------
# One configuration


@contextlib.contextmanager
def stock_clock(pipe, device):
    """Stage times of Krea2Pipeline.__call__: wrappers around its encode_prompt and its VAE's decode, and the step
    callback's timestamps (the first step is counted from the end of encoding)."""
    times = {"encode": [], "steps": [], "decode": []}
    marks: list[float] = []
    encode, decode = pipe.encode_prompt, pipe.vae.decode

    def wrap(fn, stage):
        def timed(*args, **kwargs):
            sync(device)
            began = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            times[stage].append(time.perf_counter() - began)
            marks.append(time.perf_counter())
            return out
        return timed

    def on_step(_pipe, _i, _t, tensors):
        sync(device)
        now = time.perf_counter()
        times["steps"].append(now - marks[-1])
        marks.append(now)
        return tensors

    pipe.encode_prompt, pipe.vae.decode = wrap(encode, "encode"), wrap(decode, "decode")
    try:
        yield times, on_step
    finally:
        del pipe.encode_prompt, pipe.vae.decode  # the instance attributes go; the methods show through again


def run_stock(model, prompts: list[str], seeds: list[int], size: int, steps: int, guidance: float, max_len: int):
    """Krea2Pipeline.__call__ as a diffusers user calls it, with the checkpoint's preset, on diffusers' own VAE
    forwards (weightshop's single-frame fast paths, `models.qwen_vae`, are off for the call): (seconds, stages)."""
    from weightshop.models.qwen_vae import as_shipped

    pipe = model.pipeline
    device = pipe._execution_device
    with stock_clock(pipe, device) as (times, on_step), as_shipped(pipe.vae):
        sync(device)
        began = time.perf_counter()
        pipe(prompt=prompts, negative_prompt=[NEGATIVE] * len(prompts) if guidance > 0 else None, height=size,
             width=size, num_inference_steps=steps, guidance_scale=guidance, max_sequence_length=max_len,
             generator=[torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(s)
                        for s in seeds],
             callback_on_step_end=on_step, output_type="pt")
        sync(device)
        seconds = time.perf_counter() - began
    return seconds, {"encode": sum(times["encode"]), "steps": times["steps"], "decode": sum(times["decode"])}


def run_weightshop(model, request, device):
    from weightshop.generate import generate
    from weightshop.generate.fast import stage_clock

    with stage_clock(device) as clock:
        sync(device)
        began = time.perf_counter()
        generate(model, request)
        sync(device)
        seconds = time.perf_counter() - began
    return seconds, {"encode": sum(clock.encode), "steps": clock.steps, "decode": sum(clock.decode),
                     "cached_steps": clock.cached_steps}


def summary(runs: list[tuple[float, dict]], images: int) -> dict:
    seconds = statistics.median(s for s, _ in runs)
    steps = [x for _, st in runs for x in st["steps"]]
    return {"s_per_image": seconds / images, "seconds": seconds, "all": [s for s, _ in runs],
            "encode_s": statistics.median(st["encode"] for _, st in runs),
            "step_s": statistics.median(steps) if steps else None,
            "denoise_s": statistics.median(sum(st["steps"]) for _, st in runs),
            "decode_s": statistics.median(st["decode"] for _, st in runs)}


def measure_config(model, name: str, *, size: int, steps: int | None, batch: int, repeats: int, warmup: int,
                   device: str, memory: bool) -> dict:
    """Stock and weightshop, interleaved, on one loaded model in one configuration."""
    from weightshop.generate import GenerateRequest, plan
    from weightshop.generate.fast import FastPath

    overrides = CONFIGS[name][0]
    seeds = list(range(batch))
    request = GenerateRequest(prompts=[PROMPT], negative_prompt=NEGATIVE, seeds=seeds, width=size, height=size,
                              steps=steps, batch_size=batch, fast=replace(FastPath(), **overrides))
    p = plan(model, request)
    guided = p.preset.guidance > 0
    stock, ours = [], []
    for i in range(warmup + repeats):
        a = run_stock(model, [PROMPT] * batch, seeds, size, p.preset.steps, p.preset.guidance, p.max_sequence_length)
        b = run_weightshop(model, request, device)
        if i >= warmup:
            stock.append(a)
            ours.append(b)
    row = {"config": name, "batch": batch, "size": size, "steps": p.preset.steps, "guided": guided,
           "stock": summary(stock, batch), "weightshop": summary(ours, batch)}
    row["speedup"] = row["stock"]["seconds"] / row["weightshop"]["seconds"]
    row["text_tokens"] = {"padded": p.max_sequence_length, "trimmed": trimmed_tokens(model, p.max_sequence_length)}
    if memory:
        from weightshop.models.memory import measure_peak

        gc.collect()
        row["peak_bytes"] = measure_peak(lambda: run_weightshop(model, request, device), device)
    return row


def trimmed_tokens(model, max_len: int) -> dict:
    """The transformer's text length for the bench's prompt and negative prompt with the padding trimmed."""
    from weightshop.generate.text import PromptCache

    cache = PromptCache(model.pipeline, max_len, "bench", trim=True)
    with torch.no_grad():
        cache.warm([PROMPT, NEGATIVE])
    return {"prompt": cache.get([PROMPT])[0].shape[1], "negative": cache.get([NEGATIVE])[0].shape[1]}


def prepare(model, name: str) -> dict:
    """Apply a configuration's model changes (speed_up, in-memory quantization) to a freshly loaded model."""
    from weightshop.generate.fast import speed_up

    _, speed, fmt, _ = CONFIGS[name]
    done = speed_up(model, **speed) if speed else {}
    if fmt:
        from weightshop.models.quantized import quantize_in_memory

        done["quantized"] = len(quantize_in_memory(model.pipeline.transformer, fmt, share_by_shape=True))
    return done


def available(name: str, device: str) -> str | None:
    """Why a configuration cannot run here (None: it can)."""
    from weightshop.generate.fast import fp8_matmul_available, int8_matmul_available

    if name == "fp8-mm" and not fp8_matmul_available(device):
        return "float8 matmuls need CUDA compute capability 8.9+"
    if name == "int8-mm" and not int8_matmul_available(device):
        return "int8 matmuls need the CPU or CUDA compute capability 7.5+"
    if name == "cuda-graphs" and torch.device(device).type != "cuda":
        return "CUDA graphs need a CUDA device"
    if name.startswith("offload") and torch.device(device).type != "cuda":
        return "offload moves weights between host and a GPU: nothing to measure on the CPU"
    return None


# ---------------------------------------------------------------------------------------------------
# Checks and the run


def image_checks(model, size: int, steps: int | None) -> dict:
    """Numbers the bench's speed-ups rest on: weightshop's loop with padded text equals stock exactly (both on
    weightshop's VAE paths); trimmed text and batched guidance stay within float rounding of it; stock on diffusers'
    own VAE forwards, as the timed stock runs decode, within float rounding of stock on weightshop's (max
    |difference| of [0, 1] images)."""
    from weightshop.models.qwen_vae import as_shipped

    from weightshop.generate import GenerateRequest, plan
    from weightshop.generate.fast import FastPath, sample
    from weightshop.generate.text import PromptCache
    from weightshop.models.placement import execution_device

    pipe = model.pipeline
    device = execution_device(pipe)
    p = plan(model, GenerateRequest(prompts=[PROMPT], width=size, height=size, steps=steps))
    guided = p.preset.guidance > 0
    gens = lambda: [torch.Generator(device=device).manual_seed(0)]  # noqa: E731

    def render(fast: FastPath):
        cache = PromptCache(pipe, p.max_sequence_length, "check", trim=fast.trim_text)
        with torch.no_grad():
            embeds, mask = cache.get([PROMPT])
            neg = cache.get([NEGATIVE]) if guided else None
        return sample(pipe, embeds.to(device), mask.to(device), height=size, width=size, steps=p.preset.steps,
                      guidance=p.preset.guidance, mu=p.mu, generators=gens(), negative=neg, fast=fast).float()

    def call_stock():
        return pipe(prompt=[PROMPT], negative_prompt=[NEGATIVE] if guided else None, height=size, width=size,
                    num_inference_steps=p.preset.steps, guidance_scale=p.preset.guidance, generator=gens(),
                    max_sequence_length=p.max_sequence_length, output_type="pt").images.float()

    stock = call_stock()
    with as_shipped(pipe.vae):
        shipped = call_stock()
    padded = render(FastPath(trim_text=False, batch_guidance=False))
    trimmed = render(FastPath())
    return {"own_loop_vs_stock": (padded - stock).abs().max().item(),
            "trimmed_vs_padded": (trimmed - padded).abs().max().item(),
            "fast_vae_vs_shipped": (stock - shipped).abs().max().item(), "tolerance": 1e-3}


def step_cache_rows(model, size: int, steps: int, thresholds: list[float], device: str) -> list[dict]:
    """Raw's guided sampling with the first-block cache at each threshold: speed-up and drift against no cache."""
    from weightshop.generate import GenerateRequest, plan
    from weightshop.generate.fast import FastPath, sample, stage_clock
    from weightshop.generate.text import PromptCache

    pipe = model.pipeline
    p = plan(model, GenerateRequest(prompts=[PROMPT], width=size, height=size, steps=steps))
    cache = PromptCache(pipe, p.max_sequence_length, "cache", trim=True)
    with torch.no_grad():
        embeds, mask = cache.get([PROMPT])
        neg = cache.get([NEGATIVE])
    dev = embeds.device

    def render(threshold: float):
        with stage_clock(device) as clock:
            sync(device)
            began = time.perf_counter()
            out = sample(pipe, embeds, mask, height=size, width=size, steps=p.preset.steps, guidance=max(
                p.preset.guidance, 1.0), mu=p.mu, generators=[torch.Generator(device=dev).manual_seed(0)],
                negative=neg, fast=FastPath(step_cache=threshold))
            sync(device)
        return out.float(), time.perf_counter() - began, clock.cached_steps

    render(0.0)  # warm-up
    base, base_s, _ = render(0.0)
    rows = []
    for threshold in thresholds:
        out, seconds, hits = render(threshold)
        mse = ((out - base) ** 2).mean().item()
        rows.append({"threshold": threshold, "steps": p.preset.steps, "cached_steps": hits,
                     "speedup": base_s / seconds, "max_abs_drift": (out - base).abs().max().item(),
                     "psnr_db": float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()})
    return rows


def run_bench(*, model: str | None = "krea2-nano-turbo", raw_model: str | None = "krea2-nano-raw",
              configs: str = DEFAULT, batches: str = "1,2", size: int | None = None, steps: int | None = None,
              raw_steps: int | None = None, repeats: int = 3, warmup: int = 1, dtype: str = "auto",
              dollars_per_hour: float = 2.0, cache_thresholds: str = "0.1,0.3", memory: bool = True,
              memory_profile: bool = False, device: str | None = None, budget_s: float = 1e9,
              progress=None) -> dict:
    """Every configuration at batch 1, the default configuration at each batch size, the image checks, and Raw's
    step cache; model None: full-size Krea 2 with random weights (Turbo; Raw shares its components).
    `memory_profile`: also where the bytes go in one default generation (`memory_profile`)."""
    from weightshop.models.shape import full_size_shape, model_shape

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    began = time.perf_counter()
    shape = full_size_shape() if model is None else model_shape(model)
    size = size or shape.default_size
    names = [n for n in configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        from weightshop.errors import WeightshopError

        raise WeightshopError(f"unknown configuration(s) {', '.join(unknown)}: expected {', '.join(CONFIGS)}")
    device_name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    rows, shared = [], None
    plan_ = [(n, 1) for n in names] + [("eager", int(b)) for b in batches.split(",") if b and int(b) > 1]
    checks = None
    for name, batch in plan_:
        why = available(name, device) or ("time budget" if time.perf_counter() - began > budget_s else None)
        if why:
            rows.append({"config": name, "batch": batch, "skipped": why})
            continue
        try:
            loaded, shared = load(model, "turbo", device, dtype, CONFIGS[name][3], shared)
            done = prepare(loaded, name)
            if checks is None and name in ("eager", "padded"):
                checks = image_checks(loaded, size, steps)
            row = measure_config(loaded, name, size=size, steps=steps, batch=batch, repeats=repeats, warmup=warmup,
                                 device=device, memory=memory and batch == 1)
            row["prepared"] = done
            add_flops(row, shape.config, shape.image_tokens(size, size), device_name, dollars_per_hour,
                      fp8=name == "fp8-mm")
            del loaded
        except Exception as e:  # record and go on: one failing configuration must not cost the others
            row = {"config": name, "batch": batch, "error": f"{type(e).__name__}: {e}"[:400]}
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        if progress:
            progress(row)
    baseline = next((r for r in rows if r.get("config") == names[0] and r.get("batch") == 1 and "stock" in r), None)
    for r in rows:
        if baseline and "stock" in r:
            r["speedup_vs_stock_baseline"] = baseline["stock"]["s_per_image"] / r["weightshop"]["s_per_image"]
    cache_rows = []
    thresholds = [float(t) for t in cache_thresholds.split(",") if t]
    if thresholds:
        try:
            wanted = raw_model or model is None
            raw = load(raw_model, "raw", device, dtype, "none", shared)[0] if wanted else None
            if raw is not None:
                cache_rows = step_cache_rows(raw, size, raw_steps or raw.checkpoint.preset.steps, thresholds, device)
                del raw
        except Exception as e:
            cache_rows = [{"error": f"{type(e).__name__}: {e}"[:400]}]
    profile = None
    if memory_profile and time.perf_counter() - began > budget_s:
        profile = {"skipped": "time budget"}
    elif memory_profile:
        try:
            loaded, shared = load(model, "turbo", device, dtype, "none", shared)
            profile = memory_profile_of(loaded, size, steps, device)
            del loaded
        except Exception as e:
            profile = {"error": f"{type(e).__name__}: {e}"[:400]}
    import diffusers

    return {"memory_profile": profile, "device": device_name, "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "model": model or "krea2 full size (random weights)", "size": size, "image_tokens": shape.image_tokens(
                size, size), "dollars_per_hour": dollars_per_hour, "checks": checks,
            "flop_limit": flop_limit(shape.config, shape.image_tokens(size, size), device_name),
            "rows": rows, "step_cache": cache_rows, "seconds": time.perf_counter() - began}


def add_flops(row: dict, config: dict, image_tokens: int, device_name: str, dollars_per_hour: float,
              fp8: bool = False) -> None:
    """FLOPs per image (the useful work: trimmed text, both guidance branches), achieved TFLOP/s, MFU, $ per image."""
    from weightshop.models import flops

    text = row["text_tokens"]
    work = flops.generation_flops(config, image_tokens, text["trimmed"]["prompt"], row["steps"], row["guided"],
                                  negative_tokens=text["trimmed"]["negative"])
    padded = flops.generation_flops(config, image_tokens, text["padded"], row["steps"], row["guided"])
    row["flops"] = {"per_image": work, "per_image_padded": padded}
    for who in ("stock", "weightshop"):
        r = row[who]
        denoise = r["denoise_s"] / row["batch"]
        r["tflops_per_s"] = work / denoise / flops.TERA if denoise > 0 else None
        r["mfu"] = flops.mfu(work, denoise, device_name, fp8=fp8)
        r["dollars_per_image"] = dollars_per_hour * r["s_per_image"] / 3600


def flop_limit(config: dict, image_tokens: int, device_name: str) -> dict | None:
    """Seconds per image at the device's dense peak for each preset (trimmed text of 64 tokens, as PEERS.md counts)."""
    from weightshop.models import flops
    from weightshop.models.spec import KREA2

    out = {}
    for name, checkpoint in KREA2.checkpoints.items():
        preset = checkpoint.preset
        work = flops.generation_flops(config, image_tokens, 64, preset.steps, preset.guidance > 0)
        for fp8 in (False, True):
            peak = flops.peak_tflops(device_name, fp8)
            if peak:
                out[f"{name}_{'fp8' if fp8 else 'bf16'}_s"] = work / (peak * flops.TERA)
    return out or None


# ---------------------------------------------------------------------------------------------------
# Where the bytes go


def memory_profile_of(model, size: int, steps: int | None, device: str) -> dict:
    """One default generation's memory: the peak each stage adds (`generate.memory.measure_stages`, CPU and CUDA)
    and, on CUDA, the caching allocator's own record of the run (`torch.cuda.memory._record_memory_history`),
    summarised as JSON by `snapshot_summary`: torch's pickled snapshot is never written, so the report stays a
    file anyone may open."""
    from weightshop.generate import GenerateRequest, generate
    from weightshop.generate.memory import measure_stages

    request = GenerateRequest(prompts=[PROMPT], negative_prompt=NEGATIVE, width=size, height=size, steps=steps)
    out = {"stages": measure_stages(model, request, device)}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.memory._record_memory_history(max_entries=200_000)
        try:
            generate(model, request)
            torch.cuda.synchronize(device)
            snapshot = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        out["cuda"] = snapshot_summary(snapshot)
    return out


def _site(frames: list[dict]) -> str:
    """The first frame in weightshop, diffusers or transformers (where a model's code asked for the bytes)."""
    for frame in frames or []:
        name = frame.get("filename", "")
        if any(part in name for part in ("weightshop", "diffusers", "transformers")):
            short = name.split("site-packages/")[-1].split("src/")[-1]
            return f"{short}:{frame.get('line')} {frame.get('name')}"
    return "(no Python frame)" if not frames else f"{frames[0].get('filename')}:{frames[0].get('line')}"


def snapshot_summary(snapshot: dict, top: int = 15) -> dict:
    """A CUDA allocator snapshot (`torch.cuda.memory._snapshot()`) as plain JSON: every segment's sizes, and from
    the allocation trace the peak of allocated bytes with what was live at that moment grouped by the code site
    that allocated it (the largest `top`)."""
    segments = [{"address": seg.get("address"), "total_size": seg.get("total_size", 0),
                 "allocated_size": seg.get("allocated_size", 0), "active_size": seg.get("active_size", 0),
                 "segment_type": seg.get("segment_type"), "blocks": len(seg.get("blocks", []))}
                for seg in snapshot.get("segments", [])]
    live: dict[int, tuple[int, str]] = {}
    current = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for trace in snapshot.get("device_traces", []):
        for event in trace:
            action, addr, nbytes = event.get("action"), event.get("addr"), event.get("size", 0)
            if action == "alloc":
                live[addr] = (nbytes, _site(event.get("frames", [])))
                current += nbytes
                if current > peak:
                    peak, at_peak = current, dict(live)
            elif action in ("free_requested", "free") and addr in live:
                current -= live.pop(addr)[0]
    sites: dict[str, int] = {}
    for nbytes, site in at_peak.values():
        sites[site] = sites.get(site, 0) + nbytes
    ranked = sorted(sites.items(), key=lambda kv: -kv[1])[:top]
    return {"segments": segments, "reserved_bytes": sum(s["total_size"] for s in segments),
            "allocated_bytes": sum(s["allocated_size"] for s in segments),
            "traced_peak_bytes": peak, "at_peak_by_site": [{"site": k, "bytes": v} for k, v in ranked]}


def memory_plot(profile: dict, path: str | Path, title: str = "") -> Path:
    """Bars of MiB: the peak each stage adds (and the weights, `start`), then on CUDA the sites live at the peak."""
    from PIL import Image, ImageDraw

    bars = [("resident weights" if k == "start" else f"{k} adds", v) for k, v in (profile.get("stages") or {}).items()]
    bars += [(row["site"][-60:], row["bytes"]) for row in (profile.get("cuda") or {}).get("at_peak_by_site", [])]
    width, bar_h, pad, left = 900, 16, 10, 380
    image = Image.new("RGB", (width, max(pad * 3 + 20 + len(bars) * (bar_h + 4), 60)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), f"memory (MiB) {title}", fill="black")
    top = max((v for _, v in bars), default=1) or 1
    y = pad * 2 + 20
    for label, value in bars:
        draw.text((pad, y), label, fill="black")
        w = int((width - left - 90) * value / top)
        draw.rectangle([left, y, left + max(w, 1), y + bar_h - 4], fill=(200, 110, 40))
        draw.text((left + w + 4, y), f"{value / 2**20:.1f}", fill="black")
        y += bar_h + 4
    from weightshop.io import atomic_write_bytes
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# ---------------------------------------------------------------------------------------------------
# The plot


def plot(report: dict, path: str | Path) -> Path:
    """Bars of seconds per image, stock beside weightshop, per configuration, with the speed-up written on each."""
    from PIL import Image, ImageDraw

    rows = [r for r in report["rows"] if "stock" in r]
    width, bar_h, pad, left = 760, 14, 10, 170
    height = pad * 3 + 20 + len(rows) * (2 * bar_h + pad)
    image = Image.new("RGB", (width, max(height, 60)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), f"seconds per image on {report['device']} ({report['model']}, {report['size']} px)",
              fill="black")
    top = max((max(r["stock"]["s_per_image"], r["weightshop"]["s_per_image"]) for r in rows), default=1.0)
    y = pad * 2 + 20
    for r in rows:
        draw.text((pad, y + bar_h // 2), f"{r['config']} b{r['batch']}", fill="black")
        for who, color in (("stock", (160, 160, 160)), ("weightshop", (40, 110, 200))):
            w = int((width - left - 120) * r[who]["s_per_image"] / top)
            draw.rectangle([left, y, left + max(w, 1), y + bar_h - 2], fill=color)
            draw.text((left + w + 4, y), f"{r[who]['s_per_image']:.3g} s" + (
                f"  {r['speedup']:.2f}x" if who == "weightshop" else ""), fill="black")
            y += bar_h
        y += pad
    from weightshop.io import atomic_write_bytes
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    """The GPU check's entry point (experiments/gpu_generate.sh): no CLI dependencies beyond argparse."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="krea2-nano-turbo")
    parser.add_argument("--raw-model", default="krea2-nano-raw")
    parser.add_argument("--full-size", action="store_true", help="Full Krea 2 with random weights (a GPU)")
    parser.add_argument("--configs", default=None)
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--raw-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--dollars-per-hour", type=float, default=2.0)
    parser.add_argument("--cache-thresholds", default="0.1,0.3")
    parser.add_argument("--reduced", action="store_true", help="CI: few configurations, one repeat")
    parser.add_argument("--memory-profile", action="store_true", help="Peak by stage; on CUDA the allocator's record")
    parser.add_argument("--device", default=None)
    parser.add_argument("--budget-s", type=float, default=1e9, help="Start no configuration after this many seconds")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if torch.device(args.device or "cpu").type == "cpu" and not torch.cuda.is_available():
        torch.set_num_threads(1)  # comparable across machines; threads fight on a shared 2-core box
    report = run_bench(**options(args), progress=lambda row: print(json.dumps(row), flush=True))
    if args.out:
        from weightshop.io import atomic_write_json

        atomic_write_json(args.out, report)
        plot(report, Path(args.out).with_suffix(".png"))
        if (report.get("memory_profile") or {}).get("stages"):
            memory_plot(report["memory_profile"], Path(args.out).with_suffix(".memory.png"), report["device"])
    return 0


def options(args) -> dict:
    reduced = args.reduced
    return dict(model=None if args.full_size else args.model, raw_model=None if args.full_size else args.raw_model,
                configs=args.configs or (REDUCED if reduced else DEFAULT), batches=args.batches,
                size=args.size, steps=args.steps, raw_steps=args.raw_steps or (4 if reduced else None),
                repeats=1 if reduced else args.repeats, warmup=args.warmup, dtype=args.dtype,
                dollars_per_hour=args.dollars_per_hour, cache_thresholds=args.cache_thresholds,
                device=args.device, budget_s=getattr(args, "budget_s", 1e9),
                memory_profile=getattr(args, "memory_profile", False))


if __name__ == "__main__":
    sys.exit(main())
