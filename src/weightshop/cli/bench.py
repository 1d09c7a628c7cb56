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
    checkpoint: str = typer.Option("turbo", help="turbo, or raw: time the Raw model (--raw-model; with --full-size "
                                                 "random Raw weights) at its own preset."),
    configs: str = typer.Option(None, help="Comma-separated, from: padded, eager, unbatched, compile, cuda-graphs, "
                                           "fp8-mm, fp8-mm+compile, fp8-mm+cuda-graphs, int8-mm, fp8, int8, "
                                           "offload-model, offload-group (default: all but unbatched; --reduced: a "
                                           "CI subset). Offload configurations run last."),
    batches: str = typer.Option("1,2", help="Batch sizes for the default configuration's throughput."),
    size: int = typer.Option(None, help="Square side in pixels (default: the model's)."),
    steps: int = typer.Option(None, help="Override the preset's steps (default: the checkpoint's preset)."),
    repeats: int = typer.Option(3, min=1),
    warmup: int = typer.Option(1, min=0, help="Untimed rounds first (compiling configurations: at least 2)."),
    dollars_per_hour: float = typer.Option(2.0, help="The device's price, for the cost per image."),
    cache_thresholds: str = typer.Option("0.1,0.3", help="First-block step cache thresholds measured on Raw."),
    reduced: bool = typer.Option(False, help="CI mode: a few configurations, one repeat, 4 Raw steps."),
    memory_profile: bool = typer.Option(False, "--memory-profile", help="Where the bytes go: peak by stage, and on "
                                        "CUDA the allocator's record summarised as JSON (plot: NAME.memory.png)."),
    out: Path = typer.Option(None, help="Write the report as JSON here (rewritten after every row), and the plot "
                                        "beside it (.png)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Seconds per image of `generate` against stock diffusers Krea2Pipeline on the same weights, as ratios."""
    from types import SimpleNamespace

    from weightshop.bench.generate import options, plots, run_bench
    from weightshop.errors import WeightshopError

    if checkpoint not in ("turbo", "raw"):
        raise WeightshopError(f"--checkpoint {checkpoint!r}: expected turbo or raw")
    args = SimpleNamespace(full_size=full_size, model=model, raw_model=raw_model or None, checkpoint=checkpoint,
                           configs=configs, batches=batches, size=size, steps=steps, raw_steps=None, repeats=repeats,
                           warmup=warmup, dtype="auto", dollars_per_hour=dollars_per_hour,
                           cache_thresholds=cache_thresholds, device=None, reduced=reduced,
                           memory_profile=memory_profile, out=out)
    report = run_bench(**options(args), progress=lambda row: console.print(
        f"{row['config']} b{row['batch']}: " + (f"{row['speedup']:.2f}x stock" if "speedup" in row
                                                 else row.get("skipped") or row.get("error", ""))))
    if out:
        plots(report, out)
    emit(report, as_json)
    console.print(generate_table(report))
    checks = report["checks"] or {}
    if "own_loop_vs_stock" in checks:
        console.print(f"images: weightshop's loop vs stock {checks['own_loop_vs_stock']:.1e}, trimmed vs padded text "
                      f"{checks['trimmed_vs_padded']:.1e}, weightshop's VAE paths vs diffusers' "
                      f"{checks['fast_vae_vs_shipped']:.1e} (tolerance {checks['tolerance']:.0e}); stock timed as "
                      "diffusers ships it")
    if report.get("weights") == "random":
        console.print("weights: random (image drift on them is not drift on Krea 2's weights)")


def number(value, spec: str, scale: float = 1.0) -> str:
    """A table cell: `value * scale` formatted, or "" where the bench has no number (a stage no clock saw)."""
    return "" if value is None else format(value * scale, spec)


def image_cell(check: dict | None) -> str:
    """A row's image_check in a cell: max |difference| against the reference, flagged when over the tolerance
    (lossy configurations are expected over it), or when the reference was one flat colour."""
    if not check or "max_abs_diff" not in check:
        return (check or {}).get("skipped", "")
    flags = [f for f, on in (("over", not check["within_tolerance"] and not check["lossy"]),
                             ("lossy", check["lossy"]), ("saturated", check["saturated"])) if on]
    return f"{check['max_abs_diff']:.1e}" + (f" ({', '.join(flags)})" if flags else "")


def generate_table(report: dict) -> Table:
    table = Table(title=f"generation on {report['device']} ({report['model']}, {report['size']} px)")
    for col in ("config", "batch", "stock s/img", "weightshop s/img", "x stock", "step ms", "TFLOP/s", "MFU",
                "peak MiB", "$/image", "img diff"):
        table.add_column(col)
    for row in report["rows"]:
        if "weightshop" not in row:
            table.add_row(row["config"], str(row["batch"]), row.get("skipped") or row.get("error", ""), *[""] * 8)
            continue
        ws = row["weightshop"]
        table.add_row(row["config"], str(row["batch"]), number(row["stock"].get("s_per_image"), ".3f"),
                      number(ws.get("s_per_image"), ".3f"), number(row.get("speedup"), ".2f"),
                      number(ws.get("step_s"), ".1f", 1000), number(ws.get("tflops_per_s"), ".3g"),
                      number(ws.get("mfu"), ".1%"), number(row.get("peak_bytes"), ".0f", 2**-20),
                      number(ws.get("dollars_per_image"), ".2g"), image_cell(row.get("image_check")))
    return table
