"""`weightshop nano ...`: build, verify and measure the embedded krea2-nano family."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import JSON_OPTION, console, emit, guarded, step_progress

app = typer.Typer(help="The embedded krea2-nano family: build (train), verify, measure.", no_args_is_help=True)


@app.command("build")
@guarded
def build(
    workdir: Path = typer.Option(Path("weightshop-out/nano-build"), help="Training state and stage results."),
    out: Path = typer.Option(None, help="Where the packaged family goes (default: the package's weights/)."),
    stage: list[str] = typer.Option(None, "--stage", help="Run only these stages (repeatable)."),
    hours: float = typer.Option(None, help="Stop long stages after this many hours; rerun to resume."),
    smoke: bool = typer.Option(False, help="Every stage for a few steps at toy sizes (a check, not a model)."),
    redo: str = typer.Option(None, help="Forget this stage and every later one (their state too), then run."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train krea2-nano: world -> VAE -> text encoder -> probe -> Raw -> Turbo -> package -> card.

    The current recipe's Raw continues family v2's: seed the workdir with `weightshop nano seed` first.
    Resumable: finished stages are skipped, an interrupted stage continues from its last save.
    """
    from weightshop.errors import WeightshopError
    from weightshop.nano.build import STAGES, run_build

    stages = tuple(stage) if stage else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise WeightshopError(f"unknown stage {unknown[0]!r}: expected one of {', '.join(STAGES)}")
    with step_progress("") as progress:
        record = run_build(workdir, out, stages, smoke=smoke, hours=hours, redo=redo,
                           progress=lambda label, d, t, m: progress(label, d, t, m))
    emit(record, as_json)
    if not as_json:
        table = Table(title=f"nano build in {workdir}")
        table.add_column("stage")
        table.add_column("state")
        for name in STAGES:
            table.add_row(name, "[green]done[/]" if name in record["stages"] else "[yellow]pending[/]")
        console.print(table)


@app.command("carry")
@guarded
def carry(
    dest: Path = typer.Argument(..., help="Directory to copy the build into (another machine's --workdir)."),
    workdir: Path = typer.Option(Path("weightshop-out/nano-build"), help="The build to carry."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Copy a build in progress for another machine: finished results and the running stage's state, no caches."""
    from weightshop.errors import WeightshopError
    from weightshop.nano.build import Build, NanoRecipe

    if not (workdir / "build.json").is_file():
        raise WeightshopError(f"{workdir}: no build.json here; pass the --workdir of a `weightshop nano build`")
    copied = Build(workdir, recipe=NanoRecipe()).carry(dest)
    size = sum((dest / p).stat().st_size for p in copied)
    emit({"dest": str(dest), "files": copied, "bytes": size}, as_json)
    if not as_json:
        console.print(f"carried {len(copied)} files ({size / 2**20:.1f} MiB) to {dest}: run "
                      f"`weightshop nano build --workdir {dest}` there to go on")


@app.command("seed")
@guarded
def seed(
    family_root: Path = typer.Argument(None, help="A packaged nano family (default: the package's weights/)."),
    record: Path = typer.Option(..., help="The build.json of the build that packaged that family."),
    workdir: Path = typer.Option(Path("weightshop-out/nano-build"), help="The fresh build to seed."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Start a build from a packaged family: its VAE, text encoder, probe where the recipe kept them (and Raw, for a recipe that continues it)."""
    import json

    from weightshop.errors import WeightshopError
    from weightshop.models import builtin
    from weightshop.nano.build import Build, NanoRecipe

    root = family_root or builtin.WEIGHTS
    try:
        previous = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        raise WeightshopError(f"{record}: cannot read it as a build record ({err}); expected a nano build.json") from err
    stages = Build(workdir, recipe=NanoRecipe()).seed_from(root, previous)
    emit({"workdir": str(workdir), "seeded": stages}, as_json)
    if not as_json:
        from weightshop.nano.build import SEEDED_STAGES

        redo = [s for s in SEEDED_STAGES if s not in stages]
        console.print(f"seeded {', '.join(stages)} in {workdir} from {root}"
                      + (f" ({', '.join(redo)}: the recipe changed, so the build redoes it)" if redo else "")
                      + f": run `weightshop nano build --workdir {workdir}` to go on")


@app.command("verify")
@guarded
def verify(as_json: bool = JSON_OPTION) -> None:
    """Check the committed nano weights against their sha256 manifest."""
    from weightshop.errors import WeightshopError
    from weightshop.models import builtin

    if not builtin.installed():
        raise WeightshopError("krea2-nano is not built yet: run `weightshop nano build`")
    bad = builtin.verify()
    emit({"ok": not bad, "problems": bad}, as_json)
    for line in bad:
        console.print(f"[red]{line}[/]")
    if bad:
        raise typer.Exit(1)
    if not as_json:
        console.print("[green]ok[/]: every nano file matches its sha256")


@app.command("card")
@guarded
def card(
    root: Path = typer.Option(None, help="Packaged family to measure (default: the package's weights/)."),
    workdir: Path = typer.Option(Path("weightshop-out/nano-build"), help="The build whose record the card cites."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure the packaged family (probe-judged quality, seconds per image) and rewrite its model card."""
    from weightshop.models import builtin
    from weightshop.nano.build import NanoRecipe
    from weightshop.nano.card import write_card

    root = root or builtin.WEIGHTS
    from weightshop.nano.card import read_build_record

    record = read_build_record(workdir)  # a WeightshopError naming workdir when it holds no build record
    with step_progress("") as progress:
        result = write_card(root, record, NanoRecipe(), progress=lambda label, d, t, m: progress(label, d, t))
    emit(result, as_json)
    if not as_json:
        console.print(f"model card: {root / 'MODEL_CARD.md'}")
