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
