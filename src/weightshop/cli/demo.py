from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import JSON_OPTION, console, emit, guarded, step_progress


@guarded
def demo(
    workdir: Path = typer.Option(Path("weightshop-out/demo"), help="Where models, images and the report go."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the loop on the embedded model, offline on CPU, and print where the report is."""
    from weightshop.demo import run_demo

    with step_progress("demo") as progress:
        summary = run_demo(workdir, progress)
    emit(summary, as_json)
    table = Table(title=f"generate on {summary['model']}")
    rows = summary["stages"]["generate"]["table"]
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    console.print(f"report: [bold]{summary['report']}[/]")
