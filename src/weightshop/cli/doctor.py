from __future__ import annotations

import typer
from rich.table import Table

from weightshop.cli.common import JSON_OPTION, console, emit


def doctor(as_json: bool = JSON_OPTION) -> None:
    """Check this machine: torch/CUDA, GPUs (VRAM, bf16, fp8), diffusers, disk, HF cache, optional extras."""
    from weightshop.doctor import collect, problems

    report = collect()
    found = problems(report)
    report["problems"] = found
    report["ok"] = not found
    emit(report, as_json)
    if not as_json:
        table = Table(title="weightshop doctor", show_header=False)
        for key in ("python", "torch", "cuda_available", "cuda_version", "cpu_threads", "cpu_threads_used", "cpu_bf16",
                    "diffusers", "krea2_in_diffusers", "transformers", "peft", "accelerate", "safetensors", "hf_cache",
                    "free_disk_gib"):
            table.add_row(key, str(report[key]))
        for gpu in report["gpus"] or [{"name": "none (CPU only)"}]:
            table.add_row("gpu", ", ".join(f"{k}={v}" for k, v in gpu.items()))
        for name, extra in report["extras"].items():
            state = f"[green]{extra['version'] or 'yes'}[/]" if extra["installed"] else "[dim]not installed[/]"
            table.add_row(f"extra: {name}", f"{state}  ({extra['for']})")
        console.print(table)
    for problem in found:
        console.print(f"[bold red]problem:[/] {problem}", highlight=False, soft_wrap=True)
    if found:
        raise typer.Exit(1)
    if not as_json:
        console.print("[green]ok[/]: everything weightshop needs is here")
