"""weightshop's command line. Each stage of the loop adds its command group here as it lands."""

from __future__ import annotations

import typer

from weightshop import __version__
from weightshop.cli import data, demo, doctor, generate, info, nano, train

app = typer.Typer(
    name="weightshop",
    help="Own Krea 2 end to end: load Raw and Turbo, generate with the right presets (more stages as they land).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("doctor")(doctor.doctor)
app.command("info")(info.info)
app.command("generate")(generate.generate)
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.add_typer(nano.app, name="nano")
app.add_typer(data.app, name="data")


@app.command("version")
def version() -> None:
    """Print weightshop's version."""
    typer.echo(__version__)


def main() -> None:
    from weightshop.cli.common import quiet_libraries

    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
