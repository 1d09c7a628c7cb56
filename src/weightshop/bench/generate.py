"""Seconds per image of `generate` against stock diffusers `Krea2Pipeline.__call__`, on the same weights, same run.

Every configuration times both on the same pipeline object (same weights, same quantization, same placement,
same prompts and seeds), interleaved, medians of `repeats`: the ratio stock / weightshop is the speed-up. Stages
(text encoding, each denoising step, VAE decode) come from `generate.fast.stage_clock` for weightshop and from
timing wrappers around the pipeline's encode_prompt / vae.decode and its step callback for stock. FLOPs, MFU and
the FLOP limit come from `models.flops`; peak memory from `models.memory.measure_peak`; cost per image from $/hour.

A speed option that broke the pixels must not pass as a speed-up: every timed row carries `image_check`, its
image's distance from the first eager (or padded) configuration's. Compiling configurations are timed only after
two warm-up rounds (the first call compiles, CUDA graphs record on a later one). The run order keeps one
configuration from leaking into the next: compiled graphs are reset between them, and the offload configurations,
whose hooks stay on the shared text encoder and VAE, run last. The budget bounds every section after it runs out,
and with `out` the report is rewritten after each row, so a run cut short keeps what it measured.

Full size needs no download: random weights of Krea 2's shapes (speed and memory do not depend on the values;
image drift on them is labelled `weights: random`) and a tokenizer trained locally (`models.tiny`).

    python -m weightshop.bench.generate --model krea2-nano-turbo --reduced          # CI, seconds
    python -m weightshop.bench.generate --full-size --out weightshop-out/gpu_generate.json   # a GPU
    python -m weightshop.bench.generate --full-size --checkpoint raw --configs eager,unbatched --batches 1
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
COLOURS = ("red", "green", "yellow", "purple", "orange", "white", "black", "pink")
# name -> (FastPath overrides, speed_up kwargs, quantized format, offload mode)
CONFIGS = {
    "padded": ({"trim_text": False}, {}, None, "none"),  # weightshop's loop, text padded as stock pads it
    "eager": ({}, {}, None, "none"),  # the defaults: trimmed text, cached text features, batched guidance
    "unbatched": ({"batch_guidance": False}, {}, None, "none"),  # guided presets (Raw): one forward per branch
    "compile": ({}, {"compile": True}, None, "none"),
    "fp8-mm": ({}, {"fp8_matmul": True}, None, "none"),
    "fp8-mm+compile": ({}, {"fp8_matmul": True, "compile": True}, None, "none"),  # the fp8 goal needs both
    "fp8-mm+cuda-graphs": ({}, {"fp8_matmul": True, "cuda_graphs": True}, None, "none"),
    "int8-mm": ({}, {"int8_matmul": True}, None, "none"),  # int8 matmuls (torch._int_mm): GeForce cards, CPU
    "cuda-graphs": ({}, {"cuda_graphs": True}, None, "none"),  # regional compile, mode reduce-overhead
    "int8": ({}, {}, "int8", "none"),
    "fp8": ({}, {}, "fp8", "none"),
    "offload-model": ({}, {}, None, "model"),
    "offload-group": ({}, {}, None, "group"),
}
REDUCED = "padded,eager,int8,int8-mm,offload-model"
DEFAULT = ("padded,eager,compile,cuda-graphs,fp8-mm,fp8-mm+compile,fp8-mm+cuda-graphs,int8-mm,fp8,int8,"
           "offload-model,offload-group")
COMPILED_WARMUP = 2  # compiling configurations: the first round compiles, CUDA graphs record on the second
FP32_TOLERANCE = 1e-3  # image_check in fp32: float rounding only
BF16_TOLERANCE = 2e-2  # in bf16 the rounding of every matmul compounds over the steps
SATURATED_STD = 0.02  # a reference image this flat (random weights often clip to one colour) proves little


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def warmup_rounds(name: str, warmup: int) -> int:
    """Untimed rounds before a configuration is timed: what was asked, and at least COMPILED_WARMUP where the
    configuration compiles (one warm-up would time the CUDA graphs' recording, or a recompile, as a speed)."""
    speed = CONFIGS[name][1]
    return max(warmup, COMPILED_WARMUP) if speed.get("compile") or speed.get("cuda_graphs") else warmup


def lossy(name: str) -> bool:
    """Whether a configuration changes the numbers beyond float rounding (quantized weights or matmuls): its
    image_check measures the loss, it is not expected within the rounding tolerance."""
    _, speed, fmt, _ = CONFIGS[name]
    return bool(fmt or speed.get("fp8_matmul") or speed.get("int8_matmul"))


def batch_prompts(batch: int) -> list[str]:
    """One distinct prompt per image (the bench prompt first): with one repeated prompt weightshop's prompt cache
    would encode once where stock encodes every image, and the batch rows would time that instead of batching."""
    return [PROMPT.replace("red", COLOURS[i]) if i < len(COLOURS) else f"{PROMPT}, number {i}" for i in range(batch)]


def run_order(names: list[str], batches: list[int]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(resident rows, offload rows) as (configuration, batch): the resident configurations as given, the batch
    rows right after "eager" (so a budget that runs out still has them), and the offload configurations apart:
    they run last of all, since their hooks stay on the text encoder and VAE every configuration shares."""
    resident = [n for n in names if CONFIGS[n][3] == "none"]
    extra = [("eager", b) for b in batches if b > 1]
    rows: list[tuple[str, int]] = []
    for name in resident:
        rows.append((name, 1))
        if name == "eager":
            rows += extra
    if "eager" not in resident:
        rows += extra
    return rows, [(n, 1) for n in names if CONFIGS[n][3] != "none"]


# ---------------------------------------------------------------------------------------------------
# Models


def random_model(checkpoint: str, device: str, dtype: torch.dtype, shared=None, offload: str = "none", *,
                 config: dict | None = None, components: tuple[dict, dict] | None = None,
                 select_layers: tuple[int, ...] | None = None):
    """Krea 2 with random weights built on the device (no download, no host copy), as (LoadedModel, shared
    components to reuse). Full size unless `config` (the transformer's) and `components` ((text encoder config,
    VAE config), with the text encoder's `select_layers`) say otherwise: the tests build it at nano size.

    Every module is built from seed 0, so every configuration's load has the same weights, and its fp32 modules are
    cast back to fp32 (`models.loading.cast_like_pretrained`), so the random model runs the checkpoints' kernels.
    Offload configurations build on the device too when the transformer fits there (placement then moves it off):
    the CPU's generator draws other numbers than the device's, so only a card too small for the resident
    configurations (which then have no image to compare with either) gets weights drawn on the CPU."""
    from diffusers import AutoencoderKLQwenImage, Krea2Transformer2DModel
    from transformers import Qwen3VLConfig, Qwen3VLModel

    from weightshop.models.loading import (LoadedModel, ModelSource, SharedComponents, build_pipeline,
                                           cast_like_pretrained)
    from weightshop.models.placement import Placement, place
    from weightshop.models.shape import full_size_component_configs, full_size_shape
    from weightshop.models.spec import KREA2
    from weightshop.models.tiny import tiny_tokenizer

    config = config or full_size_shape().config
    where = device if offload == "none" or fits(config, dtype, device) else "cpu"

    def build(fn):
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        torch.manual_seed(0)
        try:
            with torch.device(where):
                return cast_like_pretrained(fn().eval(), dtype)
        finally:
            torch.set_default_dtype(before)

    if shared is None:
        te, vae = components or full_size_component_configs()
        shared = SharedComponents(build(lambda: AutoencoderKLQwenImage.from_config(vae)),
                                  build(lambda: Qwen3VLModel(Qwen3VLConfig(**te))), tiny_tokenizer(),
                                  tuple(select_layers or KREA2.text_encoder_select_layers), Path("(random weights)"))
    transformer = build(lambda: Krea2Transformer2DModel.from_config(config))
    pipe = build_pipeline(transformer, shared, KREA2.checkpoint(checkpoint))
    placement = Placement(offload)
    place(pipe, device, placement)
    source = ModelSource("random", Path("(random weights)"), Path("(random weights)"), checkpoint,
                         f"krea2-{checkpoint} (random weights)")
    return LoadedModel(pipe, KREA2.checkpoint(checkpoint), source, KREA2, placement), shared


def fits(config: dict, dtype: torch.dtype, device: str, margin: float = 1.25) -> bool:
    """Whether a transformer of `config` in `dtype` fits in the device's free memory, with room to spare (the CPU:
    always, there is nothing to move)."""
    if torch.device(device).type != "cuda":
        return True
    from weightshop.models.memory import weight_counts

    free, _ = torch.cuda.mem_get_info(device)
    return weight_counts(config).total * dtype.itemsize * margin < free


def unhook(shared) -> None:
    """Take the offload hooks a configuration left on the shared text encoder and VAE off again: they would keep
    the previous pipeline's transformer alive (the hooks chain to it) and move modules under the next one."""
    if shared is None:
        return
    from accelerate.hooks import remove_hook_from_module

    for module in (shared.text_encoder, shared.vae):
        remove_hook_from_module(module, recurse=True)


def load(model: str | None, checkpoint: str, device: str, dtype: str, offload: str, shared=None):
    """(LoadedModel, shared components to reuse) for a model name, or full-size random weights when model is None."""
    from weightshop.models.loading import resolve_dtype

    if model is None:
        unhook(shared)
        return random_model(checkpoint, device, resolve_dtype(dtype, device), shared, offload)
    from weightshop.models.loading import load_model

    return load_model(model, dtype=dtype, device=device, offload=offload), None


def release(device: str) -> None:
    """Between configurations: compiled graphs (and their CUDA graph pools) of one must not serve the next, and
    the memory it freed goes back before the next one is measured."""
    torch._dynamo.reset()
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


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


@contextlib.contextmanager
def decoded_images(pipe):
    """The images each VAE decode inside makes, as `generate` postprocesses them: floats in [0, 1], (B, 3, H, W),
    before the rounding to 8 bits that would hide a difference under 1/255. Only references are kept while the
    generation runs (no copy, no synchronisation inside a timed call)."""
    raw: list = []
    decode = pipe.vae.decode

    def keep(*args, **kwargs):
        out = decode(*args, **kwargs)
        raw.append(out[0] if isinstance(out, tuple) else out.sample)
        return out

    images: list[torch.Tensor] = []
    pipe.vae.decode = keep
    try:
        yield images
    finally:
        del pipe.vae.decode  # the instance attribute goes; the method shows through again
        images += [pipe.image_processor.postprocess(x[:, :, 0], output_type="pt").float().cpu() for x in raw]


def run_weightshop(model, request, device, images: list | None = None):
    """`generate` once under the stage clock: (seconds, stages). `images`: a list the decoded images are added to
    (`decoded_images`)."""
    from weightshop.generate import generate
    from weightshop.generate.fast import stage_clock

    catch = decoded_images(model.pipeline) if images is not None else contextlib.nullcontext([])
    with catch as caught, stage_clock(device) as clock:
        sync(device)
        began = time.perf_counter()
        generate(model, request)
        sync(device)
        seconds = time.perf_counter() - began
    if images is not None:
        images += caught
    return seconds, {"encode": clock.encode, "steps": clock.steps, "decode": clock.decode,
                     "cached_steps": clock.cached_steps}


def summary(runs: list[tuple[float, dict]], images: int) -> dict:
    """Medians over the timed rounds. A stage no clock saw is None, not 0 (weightshop's generate under offload
    renders through the stock call, whose steps the stage clock cannot see)."""
    def stage(key: str):
        seen = [st[key] for _, st in runs if st[key]]
        if len(seen) < len(runs):
            return None
        return statistics.median(sum(v) if isinstance(v, list) else v for v in seen)

    seconds = statistics.median(s for s, _ in runs)
    steps = [x for _, st in runs for x in st["steps"]]
    return {"s_per_image": seconds / images, "seconds": seconds, "all": [s for s, _ in runs],
            "encode_s": stage("encode"), "step_s": statistics.median(steps) if steps else None,
            "denoise_s": stage("steps"), "decode_s": stage("decode")}


def measure_config(model, name: str, *, size: int, steps: int | None, batch: int, repeats: int, warmup: int,
                   device: str, memory: bool, images: list | None = None) -> dict:
    """Stock and weightshop, interleaved, on one loaded model in one configuration: `warmup_rounds` untimed rounds,
    then `repeats` timed ones. One distinct prompt per image (`batch_prompts`), every image from seed 0 (batch 1:
    the bench prompt, seed 0). `images`: the last timed weightshop round's images are added to it."""
    from weightshop.generate import GenerateRequest, plan
    from weightshop.generate.fast import FastPath

    overrides = CONFIGS[name][0]
    prompts = batch_prompts(batch)
    request = GenerateRequest(prompts=prompts, negative_prompt=NEGATIVE, seeds=[0], width=size, height=size,
                              steps=steps, batch_size=batch, fast=replace(FastPath(), **overrides))
    p = plan(model, request)
    guided = p.preset.guidance > 0
    rounds = warmup_rounds(name, warmup)
    stock, ours = [], []
    for i in range(rounds + repeats):
        a = run_stock(model, prompts, [0] * batch, size, p.preset.steps, p.preset.guidance, p.max_sequence_length)
        last = i == rounds + repeats - 1
        b = run_weightshop(model, request, device, images if last else None)
        if i >= rounds:
            stock.append(a)
            ours.append(b)
    row = {"config": name, "batch": batch, "size": size, "steps": p.preset.steps, "guided": guided,
           "checkpoint": model.checkpoint.name, "warmup": rounds, "repeats": repeats,
           "stock": summary(stock, batch), "weightshop": summary(ours, batch)}
    row["speedup"] = row["stock"]["seconds"] / row["weightshop"]["seconds"]
    row["text_tokens"] = {"padded": p.max_sequence_length, "trimmed": trimmed_tokens(model, p.max_sequence_length)}
    if memory:
        from weightshop.models.memory import measure_peak

        gc.collect()
        row["peak_bytes"] = measure_peak(lambda: run_weightshop(model, request, device), device)
    return row


def image_check(image: torch.Tensor, reference: torch.Tensor, reference_name: str, tolerance: float,
                lossy_: bool) -> dict:
    """How far a configuration's image (bench prompt, seed 0) is from the reference configuration's, in [0, 1]
    units; `saturated` when the reference is nearly one colour (std < SATURATED_STD), where clipping hides
    differences and a small number proves little."""
    diff = (image[:1].float() - reference[:1].float()).abs().max().item()
    return {"max_abs_diff": diff, "reference": reference_name, "tolerance": tolerance,
            "within_tolerance": diff <= tolerance, "lossy": lossy_,
            "saturated": reference.float().std().item() < SATURATED_STD}


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

        # Sharing one quantized weight per shape is for random weights only (GGUF's CPU quantizers are slow at 12.8 B;
        # values do not matter there): on a real checkpoint it would be another model, and its image check would say so.
        random = model.source.kind == "random"
        done["quantized"] = len(quantize_in_memory(model.pipeline.transformer, fmt, share_by_shape=random))
    return done


def available(name: str, device: str) -> str | None:
    """Why a configuration cannot run here (None: it can), read from what it asks of `speed_up` and placement, so
    the combined configurations (fp8-mm+compile, fp8-mm+cuda-graphs) are refused for whichever part is missing."""
    from weightshop.generate.fast import fp8_matmul_available, int8_matmul_available

    _, speed, _, offload = CONFIGS[name]
    cuda = torch.device(device).type == "cuda"
    if speed.get("fp8_matmul") and not fp8_matmul_available(device):
        return "float8 matmuls need CUDA compute capability 8.9+"
    if speed.get("int8_matmul") and not int8_matmul_available(device):
        return "int8 matmuls need the CPU or CUDA compute capability 7.5+"
    if speed.get("cuda_graphs") and not cuda:
        return "CUDA graphs need a CUDA device"
    if offload != "none" and not cuda:
        return "offload moves weights between host and a GPU: nothing to measure on the CPU"
    return None


# ---------------------------------------------------------------------------------------------------
# Checks and the run


def image_checks(model, size: int, steps: int | None, tolerance: float = FP32_TOLERANCE) -> dict:
    """Numbers the bench's speed-ups rest on: weightshop's loop with padded text equals stock exactly (both on
    weightshop's VAE paths); trimmed text and batched guidance stay within float rounding of it; stock on diffusers'
    own VAE forwards, as the timed stock runs decode, within float rounding of stock on weightshop's (max
    |difference| of [0, 1] images). `tolerance`: the rounding allowed, recorded with the numbers (FP32_TOLERANCE;
    larger in bf16)."""
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
            "fast_vae_vs_shipped": (stock - shipped).abs().max().item(), "tolerance": tolerance}


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
              checkpoint: str = "turbo", configs: str = DEFAULT, batches: str = "1,2", size: int | None = None,
              steps: int | None = None, raw_steps: int | None = None, repeats: int = 3, warmup: int = 1,
              dtype: str = "auto", dollars_per_hour: float = 2.0, cache_thresholds: str = "0.1,0.3",
              memory: bool = True, memory_profile: bool = False, stock_checks: bool = True,
              bf16_tolerance: float = BF16_TOLERANCE, device: str | None = None, budget_s: float = 1e9,
              out: str | Path | None = None, progress=None) -> dict:
    """Every configuration at batch 1 (the default configuration at each batch size right after its own row), the
    image checks, Raw's step cache, the memory profile, and the offload configurations last (`run_order`).

    model None: Krea 2 at full size with random weights of `checkpoint` (Raw for the step cache shares its
    components); else the named model, whose own checkpoint is timed. `stock_checks`: the image checks against
    stock (`image_checks`, four more images at the preset). `bf16_tolerance`: the rounding rows' image_check allows
    in bf16 (FP32_TOLERANCE in fp32). `budget_s`, counted from this call: no section starts after it (its rows say
    "time budget"). `out`: the report is rewritten there after every row (`complete` false until the end)."""
    from weightshop.errors import WeightshopError
    from weightshop.models.loading import resolve_dtype
    from weightshop.models.shape import full_size_shape, model_shape

    began = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = full_size_shape() if model is None else model_shape(model)
    size = size or shape.default_size
    names = [n for n in configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise WeightshopError(f"unknown configuration(s) {', '.join(unknown)}: expected {', '.join(CONFIGS)}")
    resident, offloaded = run_order(names, [int(b) for b in batches.split(",") if b])
    device_name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    bf16 = resolve_dtype(dtype, device) != torch.float32
    tolerance = bf16_tolerance if bf16 else FP32_TOLERANCE
    limit = flop_limit(shape.config, shape.image_tokens(size, size), device_name)
    import diffusers

    report = {"device": device_name, "torch": torch.__version__, "diffusers": diffusers.__version__,
              "model": model or f"krea2-{checkpoint} full size (random weights)",
              "weights": "random" if model is None else "checkpoint", "size": size,
              "image_tokens": shape.image_tokens(size, size), "dollars_per_hour": dollars_per_hour,
              "budget_s": budget_s, "checks": {"tolerance": tolerance, "fp32_tolerance": FP32_TOLERANCE,
                                               "bf16_tolerance": bf16_tolerance, "bf16": bf16},
              "flop_limit": limit, "rows": [], "step_cache": [], "memory_profile": None, "complete": False}
    state = {"shared": None, "reference": None, "pending": []}  # pending: (row, image) awaiting the reference

    def over() -> bool:
        return time.perf_counter() - began > budget_s

    def save() -> None:
        report["seconds"] = time.perf_counter() - began
        if out:
            from weightshop.io import atomic_write_json

            atomic_write_json(out, report)

    def timed_row(name: str, batch: int) -> dict:
        why = available(name, device) or ("time budget" if over() else None)
        if why:
            return {"config": name, "batch": batch, "skipped": why}
        images: list[torch.Tensor] = []
        try:
            loaded, state["shared"] = load(model, checkpoint, device, dtype, CONFIGS[name][3], state["shared"])
            done = prepare(loaded, name)
            if stock_checks and "own_loop_vs_stock" not in report["checks"] and name in ("eager", "padded"):
                report["checks"].update(image_checks(loaded, size, steps, tolerance))
            row = measure_config(loaded, name, size=size, steps=steps, batch=batch, repeats=repeats, warmup=warmup,
                                 device=device, memory=memory and batch == 1, images=images)
            row["prepared"] = done
            fp8 = bool(CONFIGS[name][1].get("fp8_matmul"))
            add_flops(row, shape.config, shape.image_tokens(size, size), device_name, dollars_per_hour, fp8=fp8)
            key = f"{row['checkpoint']}_{'fp8' if fp8 else 'bf16'}_s"
            if limit and key in limit:
                row["weightshop"]["x_flop_limit"] = row["weightshop"]["s_per_image"] / limit[key]
            del loaded
        except Exception as e:  # record and go on: one failing configuration must not cost the others
            return {"config": name, "batch": batch, "error": f"{type(e).__name__}: {e}"[:400]}
        if images:
            state["pending"].append((row, images[0][:1]))
        if state["reference"] is None and name in ("eager", "padded") and batch == 1 and images:
            state["reference"] = (name, images[0][:1])
        return row

    def record(row: dict) -> None:
        release(device)
        report["rows"].append(row)
        baseline = next((r for r in report["rows"] if r.get("batch") == 1 and "stock" in r), None)
        if baseline and "stock" in row:
            report["baseline"] = baseline["config"]
            row["speedup_vs_stock_baseline"] = baseline["stock"]["s_per_image"] / row["weightshop"]["s_per_image"]
        if state["reference"] is not None:
            ref_name, ref = state["reference"]
            for r, image in state["pending"]:
                r["image_check"] = image_check(image, ref, ref_name, tolerance, lossy(r["config"]))
            state["pending"] = []
        save()
        if progress:
            progress(row)

    for name, batch in resident:
        record(timed_row(name, batch))

    thresholds = [float(t) for t in cache_thresholds.split(",") if t]
    if thresholds and over():
        report["step_cache"] = [{"skipped": "time budget"}]
    elif thresholds and (raw_model or model is None):
        try:
            raw = load(raw_model, "raw", device, dtype, "none", state["shared"])[0]
            report["step_cache"] = step_cache_rows(raw, size, raw_steps or raw.checkpoint.preset.steps, thresholds,
                                                   device)
            del raw
        except Exception as e:
            report["step_cache"] = [{"error": f"{type(e).__name__}: {e}"[:400]}]
        release(device)
        save()

    if memory_profile and over():
        report["memory_profile"] = {"skipped": "time budget"}
    elif memory_profile:
        try:
            loaded, state["shared"] = load(model, checkpoint, device, dtype, "none", state["shared"])
            report["memory_profile"] = memory_profile_of(loaded, size, steps, device)
            del loaded
        except Exception as e:
            report["memory_profile"] = {"error": f"{type(e).__name__}: {e}"[:400]}
        release(device)
        save()

    for name, batch in offloaded:  # last: their hooks stay on the shared text encoder and VAE
        record(timed_row(name, batch))
    for row, _ in state["pending"]:
        row["image_check"] = {"skipped": "no eager or padded configuration at batch 1 to compare with"}
    report["complete"] = True
    save()
    return report


def add_flops(row: dict, config: dict, image_tokens: int, device_name: str, dollars_per_hour: float,
              fp8: bool = False) -> None:
    """FLOPs per image (the useful work: trimmed text, both guidance branches), achieved TFLOP/s, MFU, $ per image
(TFLOP/s and MFU None where no clock saw the denoising steps)."""
    from weightshop.models import flops

    text = row["text_tokens"]
    work = flops.generation_flops(config, image_tokens, text["trimmed"]["prompt"], row["steps"], row["guided"],
                                  negative_tokens=text["trimmed"]["negative"])
    padded = flops.generation_flops(config, image_tokens, text["padded"], row["steps"], row["guided"])
    row["flops"] = {"per_image": work, "per_image_padded": padded}
    for who in ("stock", "weightshop"):
        r = row[who]
        denoise = (r["denoise_s"] or 0.0) / row["batch"]  # None: no clock saw the steps (offload)
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
        # Python stacks only, and few entries: recording C++ stacks of 200,000 events made the run and the snapshot
        # slow enough to matter at full size.
        torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")
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
    parser.add_argument("--checkpoint", choices=("turbo", "raw"), default="turbo",
                        help="The checkpoint timed at its preset: raw times --raw-model (full size: random Raw)")
    parser.add_argument("--configs", default=None)
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--raw-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help=f"Compiling configurations get at least "
                                                              f"{COMPILED_WARMUP}")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--dollars-per-hour", type=float, default=2.0)
    parser.add_argument("--cache-thresholds", default="0.1,0.3")
    parser.add_argument("--reduced", action="store_true", help="CI: few configurations, one repeat")
    parser.add_argument("--memory-profile", action="store_true", help="Peak by stage; on CUDA the allocator's record")
    parser.add_argument("--no-stock-checks", action="store_true",
                        help="Skip the image checks against stock (four more images at the preset)")
    parser.add_argument("--bf16-tolerance", type=float, default=BF16_TOLERANCE,
                        help="The image_check tolerance in bf16 (fp32: 1e-3)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--budget-s", type=float, default=1e9, help="Start no section after this many seconds")
    parser.add_argument("--out", default=None, help="The report, rewritten after every row, and its plot (.png)")
    args = parser.parse_args(argv)
    if torch.device(args.device or "cpu").type == "cpu" and not torch.cuda.is_available():
        torch.set_num_threads(1)  # comparable across machines; threads fight on a shared 2-core box
    report = run_bench(**options(args), progress=lambda row: print(json.dumps(row), flush=True))
    if args.out:
        plots(report, args.out)
    return 0


def plots(report: dict, out: str | Path) -> None:
    """The plots beside a report written to `out`: seconds per image (.png) and, when profiled, memory."""
    plot(report, Path(out).with_suffix(".png"))
    if (report.get("memory_profile") or {}).get("stages"):
        memory_plot(report["memory_profile"], Path(out).with_suffix(".memory.png"), report["device"])


def options(args) -> dict:
    """run_bench's keywords from parsed arguments (main's, or the CLI's namespace). --checkpoint raw times the Raw
    model (--raw-model; full size: random Raw weights) at its own preset."""
    reduced = args.reduced
    checkpoint = getattr(args, "checkpoint", "turbo") or "turbo"
    model = None if args.full_size else (args.raw_model if checkpoint == "raw" else args.model)
    if model is None and not args.full_size:
        from weightshop.errors import WeightshopError

        raise WeightshopError("--checkpoint raw times --raw-model: name one (or use --full-size)")
    return dict(model=model, raw_model=None if args.full_size else args.raw_model, checkpoint=checkpoint,
                configs=args.configs or (REDUCED if reduced else DEFAULT), batches=args.batches,
                size=args.size, steps=args.steps, raw_steps=args.raw_steps or (4 if reduced else None),
                repeats=1 if reduced else args.repeats, warmup=args.warmup, dtype=args.dtype,
                dollars_per_hour=args.dollars_per_hour, cache_thresholds=args.cache_thresholds,
                device=args.device, budget_s=getattr(args, "budget_s", 1e9),
                memory_profile=getattr(args, "memory_profile", False),
                stock_checks=not getattr(args, "no_stock_checks", False),
                bf16_tolerance=getattr(args, "bf16_tolerance", BF16_TOLERANCE), out=getattr(args, "out", None))


if __name__ == "__main__":
    sys.exit(main())
