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
    columns = [c for c in rows[0] if c not in ("threads", "n")]
    for col in columns:
        table.add_column(col.removeprefix("acc_"))
    for row in rows:
        table.add_row(*(f"{row.get(c):.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))
    console.print(table)
    console.print(f"Turbo is {summary['stages']['generate']['turbo_speedup']:.1f}x faster per image than Raw; "
                  f"demo took {summary['seconds']:.0f} s")
    curate = summary["stages"]["curate"]
    caught = curate["planted_faults_caught"]
    console.print(f"curate: {curate['counts']}; planted faults caught {sum(caught.values())}/{len(caught)} "
                  f"({', '.join(k for k, v in caught.items() if v)}); cache second run "
                  f"{curate['cache_speedup']:.0f}x faster, encoded {curate['cache_second_run_encoded']}")
    console.print(f"report: [bold]{summary['report']}[/]")
