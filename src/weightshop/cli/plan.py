"""`weightshop plan`: will this run fit on that GPU, and what to change if not."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from weightshop.cli.common import JSON_OPTION, console, emit, guarded
from weightshop.errors import WeightshopError


def parse_size(text: str | None, default: int) -> tuple[int, int]:
    if text is None:
        return default, default
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*", text)
    if not match:
        raise WeightshopError(f"--resolution {text!r}: expected a side (1024) or height x width (768x1024)")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _flops(n: float) -> str:
    return f"{n / 1e12:.1f} TFLOP" if n >= 1e11 else f"{n / 1e9:.2f} GFLOP"


def flops_text(flops: float, what: str, per: str, bound_s: dict[str, float] | None,
               peaks: dict[str, float] | None, gpu: str | None) -> str:
    """The compute line of a plan: the FLOPs of `what` (models.flops) and, on a card whose peak is known, the
    FLOP-limited lower bound in seconds `per` (a step, an image) at the card's dense peak."""
    text = f"compute (models.flops): {_flops(flops)} per {what}"
    if bound_s and peaks:
        bounds = ", ".join(f"{bound_s[k]:.3g} s {k} ({peaks[k]:g} TFLOP/s)" for k in bound_s)
        return f"{text}; FLOP-limited lower bound on {gpu}: {bounds} per {per} (no run is faster)"
    if gpu is not None:
        return f"{text}; no FLOP-limited bound: --gpu {gpu} names no card whose peak is known"
    return text


@guarded
def plan(
    config: Path = typer.Argument(None, help="Run config (YAML); optional with --preset / --set."),
    gpu: str = typer.Option(None, help="GPU memory: 24GB, 24GiB, 80, 24564MiB, or a card: H100, 4090, A100, ..."),
    preset: str = typer.Option(None, help="Start from a preset: style, subject, low-vram-24gb."),
    set_: list[str] = typer.Option(None, "--set", help="Override a field: section.key=value (repeatable)."),
    resolution: str = typer.Option(None, help="Training size: a side (1024) or HxW; default the model's size."),
    full_size: bool = typer.Option(True, "--full-size/--model",
                                   help="Predict for full-size Krea 2 (default), or for the model the config names."),
    inference: bool = typer.Option(False, "--inference", help="Predict one generation's peak instead of training."),
    model: str = typer.Option(None, "--model-name", help="--inference: a model to size (e.g. krea2-nano-turbo); "
                              "default full-size Krea 2."),
    fmt: str = typer.Option("bf16", "--format", help="--inference: the blocks' weight format: bf16, fp8, int8, "
                            "q8_0, q4_0, q4_k, nf4, ..."),
    size: str = typer.Option(None, "--size", help="--inference: a side (1024) or HxW; default the model's size."),
    batch: int = typer.Option(1, help="--inference: images per forward pass."),
    offload: str = typer.Option("none", help="--inference: none, model, group or sequential."),
    text_encoder: str = typer.Option("keep", help="--inference: keep, offload or release after encoding."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="--inference: tiled VAE decode."),
    modes: bool = typer.Option(False, "--modes", help="--inference: every offload x text encoder x tiling combination "
                               "for the format, and which meet the full-size goal."),
    measure: bool = typer.Option(False, "--measure", help="--inference: also render once and measure the real peak "
                                 "(needs --model-name; CUDA if available, else CPU)."),
    guided: bool = typer.Option(None, "--guided/--unguided", help="--inference: classifier-free guidance (Raw's "
                                "preset: both branches batched with offload none); default the named model's "
                                "checkpoint preset, unguided (Turbo) for full size."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Predict the peak GPU memory of a training run (or with --inference, of one generation), say whether it fits,
    and what to change if not."""
    from rich.table import Table

    if inference:
        from weightshop.cli.plan_inference import plan_inference

        plan_inference(model=model, fmt=fmt, size=size, batch=batch, offload=offload, text_encoder=text_encoder,
                       vae_tiling=vae_tiling, modes=modes, measure=measure, gpu=gpu, as_json=as_json,
                       guided=guided)
        return

    from weightshop.models.shape import full_size_shape, model_shape
    from weightshop.train import load_config
    from weightshop.train.plan import parse_gpu
    from weightshop.train.plan import plan as make_plan

    gpu_bytes = parse_gpu(gpu) if gpu is not None else None
    # The plan needs no data: a placeholder manifest lets a config without a data section validate.
    cfg = load_config(config, set_ or [], preset, base={"data": {"manifest": "(not needed to plan)"}})
    shape = full_size_shape() if full_size else model_shape(cfg.model.raw, cfg.model.components)
    height, width = parse_size(resolution, shape.default_size)
    result = make_plan(cfg, shape, height, width, gpu_bytes, gpu)
    emit(result.to_dict(), as_json)
    if as_json:
        return

    s = result.settings
    console.print(f"[bold]{result.model}[/] at {height}x{width}, batch {s['batch_size']}: {result.image_tokens} image + "
                  f"{result.text_tokens} text tokens; base {s['model_dtype']}"
                  f"{'' if s['base_dtype'] == 'none' else ' with ' + s['base_dtype'] + ' blocks'}, autocast "
                  f"{s['autocast']}, checkpointing {'on' if s['checkpointing'] else 'off'}; "
                  f"{'DoRA' if s['dora'] else 'LoRA'} rank {s['rank']} on {result.lora_modules} modules "
                  f"({result.lora_parameters / 1e6:.1f} M params), {s['optimizer']}{', EMA' if s['ema'] else ''}",
                  highlight=False)
    unit, show = ("GiB", _gib) if result.allocated >= 2**30 else ("MiB", _mib)  # small models in MiB
    table = Table()
    table.add_column("peak memory")
    table.add_column(unit, justify="right")
    for name, value in result.parts.items():
        if value:
            table.add_row(name, show(value))
    table.add_row("[bold]total[/]", f"[bold]{show(result.total)}[/]")
    if gpu_bytes is not None:
        table.add_row("GPU", show(gpu_bytes))
    console.print(table)
    what = f"step of batch {s['batch_size']}" + (f" (an optimizer step is {s['grad_accum']} of them)"
                                                  if s["grad_accum"] > 1 else "")
    console.print(flops_text(result.step_flops, what, "step", result.flop_lower_bound_s_per_step,
                             result.peak_tflops, gpu), highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if result.fits is None:
        return
    if result.fits:
        console.print(f"[bold green]fits[/]: {_gib(gpu_bytes - result.total)} GiB to spare")
        return
    console.print(f"[bold red]does not fit[/]: {_gib(result.total - gpu_bytes)} GiB over")
    advice = Table(title="what to change, each on top of the rows above", title_justify="left")
    for column in ("change", "GiB", "fits"):
        advice.add_column(column, justify="right" if column == "GiB" else "left")
    for tip in result.suggestions:
        advice.add_row(tip.change, _gib(tip.total), "[green]yes[/]" if tip.fits else "no")
    console.print(advice)
    first = next((t for t in result.suggestions if t.fits), None)
    if first is None:
        console.print("nothing above makes it fit: use a bigger GPU (or CPU offload, not modelled here)")
        return
    flags = [f"--set {x}" for x in first.sets]
    if first.resolution != (height, width):
        flags.append(f"(and train at {first.resolution[0]}x{first.resolution[1]})")
    console.print(f"to fit: {' '.join(flags)}", highlight=False, soft_wrap=True)
