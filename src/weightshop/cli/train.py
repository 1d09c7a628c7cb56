"""`weightshop train`: a LoRA on Raw from a curated, cached dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from weightshop.cli.common import JSON_OPTION, console, emit, guarded, step_progress


@guarded
def train(
    config: Path = typer.Argument(None, help="Run config (YAML). Optional when --set gives data.manifest."),
    preset: str = typer.Option(None, help="Start from a preset: style, subject, low-vram-24gb."),
    set_: list[str] = typer.Option(None, "--set", help="Override a field: section.key=value (repeatable)."),
    force: bool = typer.Option(False, help="Resume even though the config changed in a way that changes the result "
                                           "(never across a change of the LoRA's shapes: rank, targets, DoRA, optimizer)."),
    stop_after: int = typer.Option(None, help="Stop this sitting after this step (run the same command again to go on)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a LoRA on Raw. There is no --resume flag: run the same command again and it resumes the run in
    output.dir from its newest checkpoint that verifies, exactly where it stopped (a damaged checkpoint is named and
    set aside, and the one before it is used). It says on start whether the run is fresh or resumed, from which step."""
    from weightshop.train import load_config
    from weightshop.train import train as run

    cfg = load_config(config, set_ or [], preset)
    with step_progress("") as progress:
        result = run(cfg, force=force, stop_after=stop_after, progress=progress,
                     notify=lambda line: console.print(line, highlight=False, soft_wrap=True))
    if not result["main"]:  # under accelerate launch, only the main process reports
        return
    emit(result, as_json)
    if not as_json:
        done = "done" if result["step"] >= result["steps"] else "stopped"
        console.print(f"{done} at step {result['step']}/{result['steps']} in {result['seconds']:.1f} s, "
                      f"loss (EMA) {result['loss_ema'] or float('nan'):.4f}; run: {result['run']}")
        if "lora" in result:
            v = result["verified_on"]
            console.print(f"LoRA: [bold]{result['lora']}[/] ({result['modules']} modules; all "
                          f"{v['modules_injected']} injected into a fresh {v['checkpoint']} pipeline)")
