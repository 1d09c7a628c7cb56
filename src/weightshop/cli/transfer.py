"""`weightshop transfer`: does a LoRA trained on Raw carry over to Turbo, and at what strength?"""

from __future__ import annotations

from pathlib import Path

import typer

from weightshop.cli.common import DEVICE_HELP, JSON_OPTION, console, emit, guarded, resolve_device, step_progress
from weightshop.transfer.sweep import DEFAULT_STRENGTHS, DEFAULT_TOLERANCE_POINTS  # pure arithmetic: no torch


@guarded
def transfer(
    lora: Path = typer.Argument(..., help="The LoRA (.safetensors, diffusers/peft layout) trained on Raw."),
    raw: str = typer.Option("krea2-nano", help="Raw checkpoint: diffusers dir, single file, hub id or built-in name."),
    turbo: str = typer.Option("krea2-nano-turbo", help="Turbo checkpoint (shares Raw's VAE and text encoder)."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for single files."),
    strengths: str = typer.Option(",".join(f"{s:g}" for s in DEFAULT_STRENGTHS), help="LoRA strengths to sweep on Turbo."),
    prompts: Path = typer.Option(None, help="Prompt file, one per line (# comments)."),
    concept: str = typer.Option(None, help="star or striped: shapes-world prompts of it; the probe judges it."),
    count: int = typer.Option(16, help="Prompts made for --concept."),
    seeds: str = typer.Option("0,1", help="Seeds, comma-separated: every prompt is rendered with each."),
    train_images: Path = typer.Option(None, help="Training images (folder or dataset.json) for the generic judge."),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE_POINTS, help="Allowed drop in prompt adherence below Turbo alone, in points."),
    out: Path = typer.Option(None, "--out", "-o", help="Report folder (default: transfer/ beside the LoRA)."),
    batch_size: int = typer.Option(1, help="Images per forward pass (speed/memory only)."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    no_comfyui: bool = typer.Option(False, "--no-comfyui", help="Skip the ComfyUI workflow and LoRA export."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Sweep a Raw-trained LoRA's strength on Turbo; report the transfer ratio and the strength to use."""
    from weightshop.cli.generate import read_prompt_file
    from weightshop.transfer import run_transfer
    from weightshop.transfer.sweep import parse_seeds, parse_strengths

    sweep, seed_list = parse_strengths(strengths), parse_seeds(seeds)
    device = resolve_device(device)
    prompt_list = read_prompt_file(prompts) if prompts else None
    out = out or lora.parent / "transfer"
    with step_progress("render") as progress:
        report = run_transfer(lora, raw=raw, turbo=turbo, components=components, strengths=sweep,
                              prompts=prompt_list, concept=concept, prompt_count=count, seeds=seed_list,
                              out_dir=out, train_images=train_images, tolerance_points=tolerance,
                              batch_size=batch_size, dtype=dtype, device=device, comfyui=not no_comfyui,
                              progress=progress)
    result = report.as_dict()
    emit(result, as_json)
    if as_json:
        return
    from rich.table import Table

    table = Table(title=f"{lora.name}: judged by {', '.join(report.scorers)}")
    for col in ("setting", "concept", "adherence", "ratio"):
        table.add_column(col)
    ratios = {row["strength"]: row["transfer_ratio"] for row in report.sweep}
    for r in report.results:
        m, s = r.metrics, r.setting
        ratio = ratios.get(s.strength) if s.checkpoint == "turbo" and s.strength is not None else None
        table.add_row(s.label, f"{m['concept']:.3f}",
                      "" if m.get("adherence") is None else f"{m['adherence']:.3f}",
                      "" if ratio is None else f"{ratio:.2f}")
    console.print(table)
    ratio = "undefined" if report.transfer_ratio is None else f"{report.transfer_ratio:.2f}"
    console.print(f"recommended Turbo strength [bold]{report.recommended_strength:g}[/] (transfer ratio {ratio}): "
                  f"{report.recommendation.reason}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    if report.comfyui.get("error"):
        console.print(f"[yellow]ComfyUI export skipped:[/] {report.comfyui['error']}", highlight=False)
    elif report.comfyui:
        console.print(f"ComfyUI: {report.comfyui['workflow']} + {report.comfyui['lora']}", highlight=False)
    console.print(f"report: [bold]{report.files['html']}[/]")
