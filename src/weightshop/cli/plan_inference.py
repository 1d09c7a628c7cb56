"""`weightshop plan --inference`: one generation's peak memory by stage, per memory mode, measured on request."""

from __future__ import annotations

from weightshop.cli.common import console, emit
from weightshop.errors import WeightshopError


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def plan_inference(*, model: str | None, fmt: str, size: str | None, batch: int, offload: str, text_encoder: str,
                   vae_tiling: bool, modes: bool, measure: bool, gpu: str | None, as_json: bool,
                   guided: bool | None = None) -> None:
    from rich.table import Table

    from weightshop.generate.memory import (checkpoint_preset, full_size_inference_shape, generation_compute,
                                            goal_gib, mode_grid, model_inference_shape, predict_inference)
    from weightshop.models.memory import parse_gpu
    from weightshop.models.placement import Placement

    placement = Placement(offload, "block", 1, vae_tiling, False, text_encoder)  # bad values fail here, listed
    if measure and model is None:
        raise WeightshopError("--measure renders with a real model: pass --model-name (e.g. krea2-nano-turbo)")
    shape = model_inference_shape(model) if model else full_size_inference_shape()
    from weightshop.cli.plan import parse_size

    height, width = parse_size(size, shape.transformer.default_size)
    if guided is None:
        guided = model is not None and checkpoint_preset(model)[1].guidance > 0
    gpu_bytes = parse_gpu(gpu) if gpu is not None else None
    if modes:
        rows = mode_grid(shape, (fmt,), height, width=width, batch=batch, guided=guided)
        emit({"model": shape.name, "height": height, "width": width, "rows": rows}, as_json)
        if as_json:
            return
        goal = goal_gib(fmt)
        table = Table(title=f"{shape.name}, {fmt}, {height}x{width}, batch {batch}: predicted peak by mode"
                            + (f" (goal <= {goal:g} GiB)" if goal else ""), title_justify="left")
        for col in ("offload", "text encoder", "VAE tiling", "GiB", "peak at", "meets goal"):
            table.add_column(col, justify="right" if col == "GiB" else "left")
        for r in rows:
            meets = "-" if r["meets_goal"] is None else ("[green]yes[/]" if r["meets_goal"] else "no")
            table.add_row(r["offload"], r["text_encoder"], "on" if r["vae_tiling"] else "off", _gib(r["total"]),
                          r["peak_stage"], meets)
        console.print(table)
        return

    result = predict_inference(shape, fmt=fmt, height=height, width=width, batch=batch, placement=placement,
                               dtype=_dtype_for_measure() if measure else "bf16", guided=guided)
    out = result.to_dict()
    measured = None
    if measure:
        measured = _measure(model, result)
        compared = result
        if measured["device"] == "cpu" and (offload, text_encoder) != ("none", "keep"):
            # On the CPU every model stays in host memory whatever the mode: compare with the plan that says so.
            compared = predict_inference(shape, fmt=fmt, height=height, width=width, batch=batch,
                                         placement=Placement("none", vae_tiling=vae_tiling), dtype=s_dtype(result),
                                         guided=guided)
            result.notes.append("measured on the CPU, where offloading keeps every model in host memory: the ratio "
                                f"compares with the prediction for offload none ({_mib(compared.allocated)} MiB)")
        out["measured"] = measured
        out["ratio"] = compared.allocated / measured["peak"] if measured["peak"] else None
    if gpu_bytes is not None:
        out["gpu_bytes"], out["fits"] = gpu_bytes, result.total <= gpu_bytes
    out.update(generation_compute(shape.transformer.config, model, result.settings, gpu))
    emit(out, as_json)
    if as_json:
        return
    unit, show = ("GiB", _gib) if result.allocated >= 2**30 else ("MiB", _mib)
    s = result.settings
    console.print(f"[bold]{result.model}[/] one generation at {height}x{width}, batch {batch}: "
                  f"{s['image_tokens']} image "
                  f"+ {s['text_tokens']} text tokens"
                  f"{', guided (transformer batch ' + str(s['forward_batch']) + ')' if s['guided'] else ''}; "
                  f"blocks {fmt}, offload {offload}, text encoder {text_encoder}, "
                  f"VAE tiling {'on' if vae_tiling else 'off'}", highlight=False)
    table = Table()
    table.add_column("stage")
    table.add_column("part")
    table.add_column(unit, justify="right")
    for stage, parts in result.stages.items():
        for i, (name, value) in enumerate(parts.items()):
            table.add_row(stage if i == 0 else "", name, show(value))
        marker = " (peak)" if stage == result.peak_stage else ""
        table.add_row("", f"[bold]{stage} total{marker}[/]", f"[bold]{show(result.stage_totals[stage])}[/]")
    for name, value in result.overhead.items():
        table.add_row("", name, show(value))
    table.add_row("[bold]total[/]", "", f"[bold]{show(result.total)}[/]")
    if measured is not None:
        table.add_row("measured", f"peak tensors on {measured['device']}", show(measured["peak"]))
        table.add_row("", "predicted / measured (tensors)", f"{out['ratio']:.2f}")
    console.print(table)
    goal = goal_gib(fmt) if model is None and (height, width) == (1024, 1024) else None
    if goal is not None:
        verdict = "[green]meets[/]" if result.total <= goal * 2**30 else "[red]misses[/]"
        console.print(f"{verdict} the full-size goal of {goal:g} GiB for {fmt} (`--modes` lists every combination)")
    if gpu_bytes is not None:
        verdict = "[bold green]fits[/]" if out["fits"] else "[bold red]does not fit[/]"
        console.print(verdict, f"on {_gib(gpu_bytes)} GiB")
    from weightshop.cli.plan import flops_text

    what = (f"generation ({out['checkpoint']}'s {out['sampling_steps']} steps"
            f"{', guided' if s['guided'] else ''}, batch {batch}, {s['text_tokens']} text tokens as padded: "
            f"trimmed prompts do less)")
    console.print(flops_text(out["generation_flops"], what, "image", out["flop_lower_bound_s_per_image"],
                             out["peak_tflops"], gpu), highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)


def load_in_format(model: str, fmt: str, *, dtype: str, device: str, **placement):
    """Load `model` with its blocks' Linears quantized in memory to `fmt` (the in-memory Linear types of
    `quant.layers`: fp8, fp8-channel, fp8-mm, int8), then place it. GGUF and nf4 need their own files or CUDA."""
    import dataclasses

    from weightshop.generate.memory import DEQUANT_COPIES
    from weightshop.models.loading import load_model
    from weightshop.models.memory import QUANTIZED_PREFIX
    from weightshop.models.placement import Placement, place
    from weightshop.quant.layers import LINEAR_TYPES, convert_linears

    if fmt == "bf16":
        return load_model(model, dtype=dtype, device=device, **placement)
    if fmt not in LINEAR_TYPES:
        known = ", ".join(["bf16", *LINEAR_TYPES])
        raise WeightshopError(f"--measure can quantize in memory to {known}; {fmt} needs its file "
                              f"(formats: {', '.join(DEQUANT_COPIES)})")
    loaded = load_model(model, dtype=dtype, device="cpu")
    transformer = loaded.pipeline.transformer
    convert_linears(transformer, fmt, transformer.dtype, lambda name: name.startswith(QUANTIZED_PREFIX))
    chosen = Placement(placement.get("offload", "none"), vae_tiling=placement.get("vae_tiling", False),
                       text_encoder=placement.get("text_encoder", "keep"))
    place(loaded.pipeline, device, chosen)
    return dataclasses.replace(loaded, placement=chosen)


def s_dtype(result) -> str:
    return result.settings["dtype"]


def _dtype_for_measure() -> str:
    import torch

    return "bf16" if torch.cuda.is_available() else "fp32"


def _measure(model: str, result) -> dict:
    """Render once as the plan says (CUDA when present, else CPU) and measure the peak."""
    import torch

    from weightshop.generate import GenerateRequest
    from weightshop.generate.memory import checkpoint_preset, measure_generation

    s = result.settings
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_in_format(model, s["format"], dtype=s["dtype"], device=device, offload=s["offload"],
                            vae_tiling=s["vae_tiling"], text_encoder=s["text_encoder"])
    preset = checkpoint_preset(model)[1]
    if s["guided"] == (preset.guidance > 0):
        guidance = None  # the model's own preset
    else:  # guidance the checkpoint does not sample with by default: Raw's value, or none
        guidance = checkpoint_preset(None, guided=True)[1].guidance if s["guided"] else 0.0
    request = GenerateRequest(prompts=["a red circle"], seeds=list(range(s["batch"])), batch_size=s["batch"],
                              width=result.width, height=result.height, guidance=guidance)
    measured = measure_generation(loaded, request, device)
    return {**measured, "device": device}
