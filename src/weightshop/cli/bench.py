"""`weightshop bench`: speed and memory measured as ratios against a baseline in the same run."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import JSON_OPTION, console, emit, guarded

app = typer.Typer(help="Benchmarks: ratios against a baseline measured in the same run.", no_args_is_help=True)


@app.command("train")
@guarded
def train(
    full_size: bool = typer.Option(False, help="Full Krea 2 (12.8 B, random weights; needs a GPU). Default: nano."),
    resolutions: str = typer.Option("512,1024", help="Square sides, comma-separated (nano: use 64)."),
    bases: str = typer.Option("bf16,fp8,int8", help="Frozen-base storage to compare (bf16, fp8, fp8-mm, int8, nf4); "
                                                    "the first is the baseline."),
    compile_at: str = typer.Option("", help="Also measure these bases with regional compile at the last size."),
    steps: int = typer.Option(5, min=1), warmup: int = typer.Option(2, min=0),
    text_tokens: int = typer.Option(None, min=1, help="Text tokens per sample (default: max_sequence_length)."),
    memory_cap_gib: float = typer.Option(None, help="CUDA: allow the steps only this much (a smaller card)."),
    out: Path = typer.Option(None, help="Write the rows as JSON here (e.g. docs/benchmarks/NAME.json)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Seconds per step and peak memory of the LoRA trainer's own step, per frozen-base storage."""
    from weightshop.bench.train_step import run_matrix

    report = run_matrix(full_size=full_size, resolutions=resolutions, bases=bases, compile_at=compile_at,
                        steps=steps, warmup=warmup, text_tokens=text_tokens, memory_cap_gib=memory_cap_gib,
                        progress=lambda row: console.print(
                            f"{row['base']} {row['resolution']} px: {row.get('s_per_step', float('nan')):.3f} s/step"
                            + (f" ({row['error']})" if "error" in row else "")))
    if out:
        from weightshop.io import atomic_write_json

        atomic_write_json(out, report)
    emit(report, as_json)
    table = Table(title=f"training step on {report['device']} ({'full size' if full_size else 'krea2-nano shape'})")
    for col in ("base", "compile", "px", "s/step", "x baseline", "peak GiB", "base GiB"):
        table.add_column(col)
    for row in report["rows"]:
        if "s_per_step" not in row:
            table.add_row(row["base"], str(row.get("compile")), str(row["resolution"]), row.get("error", row.get("skipped", "")),
                          "", "", "")
            continue
        table.add_row(row["base"], str(row["compile"]), str(row["resolution"]), f"{row['s_per_step']:.3f}",
                      f"{row['ratio']:.2f}" if row.get("ratio") else "", f"{row['peak_gib']:.1f}" if "peak_gib" in row else "",
                      f"{row['base_gib']:.2f}")
    console.print(table)


@app.command("generate")
@guarded
def generate(
    model: str = typer.Option("krea2-nano-turbo", help="The model timed (Turbo's preset unless it is a Raw model)."),
    raw_model: str = typer.Option("krea2-nano-raw", help="The Raw model the step cache is measured on ('' skips)."),
    full_size: bool = typer.Option(False, help="Full Krea 2 with random weights (needs a GPU) instead of --model."),
    configs: str = typer.Option(None, help="Comma-separated, from: padded, eager, compile, cuda-graphs, fp8-mm, "
                                           "int8-mm, fp8, int8, offload-model, offload-group (default: all; "
                                           "--reduced: a CI subset)."),
    batches: str = typer.Option("1,2", help="Batch sizes for the default configuration's throughput."),
    size: int = typer.Option(None, help="Square side in pixels (default: the model's)."),
    steps: int = typer.Option(None, help="Override the preset's steps (default: the checkpoint's preset)."),
    repeats: int = typer.Option(3, min=1), warmup: int = typer.Option(1, min=0),
    dollars_per_hour: float = typer.Option(2.0, help="The device's price, for the cost per image."),
    cache_thresholds: str = typer.Option("0.1,0.3", help="First-block step cache thresholds measured on Raw."),
    reduced: bool = typer.Option(False, help="CI mode: a few configurations, one repeat, 4 Raw steps."),
    memory_profile: bool = typer.Option(False, "--memory-profile", help="Where the bytes go: peak by stage, and on "
                                        "CUDA the allocator's record summarised as JSON (plot: NAME.memory.png)."),
    out: Path = typer.Option(None, help="Write the report as JSON here, and the plot beside it (.png)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Seconds per image of `generate` against stock diffusers Krea2Pipeline on the same weights, as ratios."""
    from types import SimpleNamespace

    from weightshop.bench.generate import memory_plot, options, plot, run_bench

    args = SimpleNamespace(full_size=full_size, model=model, raw_model=raw_model or None, configs=configs,
                           batches=batches, size=size, steps=steps, raw_steps=None, repeats=repeats, warmup=warmup,
                           dtype="auto", dollars_per_hour=dollars_per_hour, cache_thresholds=cache_thresholds,
                           device=None, reduced=reduced, memory_profile=memory_profile)
    report = run_bench(**options(args), progress=lambda row: console.print(
        f"{row['config']} b{row['batch']}: " + (f"{row['speedup']:.2f}x stock" if "speedup" in row
                                                 else row.get("skipped") or row.get("error", ""))))
    if out:
        from weightshop.io import atomic_write_json

        atomic_write_json(out, report)
        plot(report, Path(out).with_suffix(".png"))
        if (report.get("memory_profile") or {}).get("stages"):
            memory_plot(report["memory_profile"], Path(out).with_suffix(".memory.png"), report["device"])
    emit(report, as_json)
    table = Table(title=f"generation on {report['device']} ({report['model']}, {report['size']} px)")
    for col in ("config", "batch", "stock s/img", "weightshop s/img", "x stock", "step ms", "TFLOP/s", "MFU",
                "peak MiB", "$/image"):
        table.add_column(col)
    for row in report["rows"]:
        if "weightshop" not in row:
            table.add_row(row["config"], str(row["batch"]), row.get("skipped") or row.get("error", ""), *[""] * 7)
            continue
        ws = row["weightshop"]
        table.add_row(row["config"], str(row["batch"]), f"{row['stock']['s_per_image']:.3f}",
                      f"{ws['s_per_image']:.3f}",
                      f"{row['speedup']:.2f}", f"{1000 * ws['step_s']:.1f}", f"{ws['tflops_per_s']:.3g}",
                      f"{ws['mfu']:.1%}" if ws["mfu"] is not None else "",
                      f"{row['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in row else "",
                      f"{ws['dollars_per_image']:.2g}")
    console.print(table)
    checks = report["checks"] or {}
    if checks:
        console.print(f"images: weightshop's loop vs stock {checks['own_loop_vs_stock']:.1e}, trimmed vs padded text "
                      f"{checks['trimmed_vs_padded']:.1e}, weightshop's VAE paths vs diffusers' "
                      f"{checks['fast_vae_vs_shipped']:.1e} (tolerance {checks['tolerance']:.0e}); stock timed as "
                      "diffusers ships it")
