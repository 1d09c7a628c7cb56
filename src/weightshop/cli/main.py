"""weightshop's command line. Each stage of the loop adds its command group here as it lands."""

from __future__ import annotations

import typer

from weightshop import __version__
from weightshop.cli import (bench, data, demo, doctor, evaluation, generate, info, lora, nano, plan, quantize, serve,
                           train, transfer)

app = typer.Typer(
    name="weightshop",
    help="Own Krea 2 end to end: curate, train LoRAs on Raw, run them on Turbo, prove the transfer (more stages as they land).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("doctor")(doctor.doctor)
app.command("info")(info.info)
app.command("generate")(generate.generate)
app.command("demo")(demo.demo)
app.command("train")(train.train)
app.command("plan")(plan.plan)
app.command("transfer")(transfer.transfer)
app.command("quantize")(quantize.quantize)
app.command("serve")(serve.serve)
app.add_typer(nano.app, name="nano")
app.add_typer(bench.app, name="bench")
app.add_typer(data.app, name="data")
app.add_typer(lora.app, name="lora")
app.add_typer(evaluation.app, name="eval")


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
