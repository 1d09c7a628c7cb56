"""`weightshop lora ...`: inspect, convert, merge, extract, resize and combine LoRA files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import JSON_OPTION, console, emit, guarded, step_progress

app = typer.Typer(help="LoRA files in every layout: inspect, convert, merge, extract, resize, combine.",
                  no_args_is_help=True)

FORMAT_HELP = "Output layout: diffusers, comfyui, kohya or aitoolkit."


def _requests(specs: list[str], default: float | None = None):
    """LoraRequests from PATH[:STRENGTH] specs; `default` replaces 1.0 where no strength was written."""
    from weightshop.lora import LoraRequest

    parsed = [LoraRequest.parse_spec(s) for s in specs]  # the one PATH[:STRENGTH] parser (bad strengths named)
    return [r if default is None or written else LoraRequest(r.path, default) for r, written in parsed]


@app.command("inspect")
@guarded
def inspect(
    file: Path = typer.Argument(..., help="LoRA .safetensors file (any layout)."),
    model: str = typer.Option(None, "--model", "-m", help="Check the fit against this model (default: the known Krea 2 sizes)."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for a single-file model."),
    modules: bool = typer.Option(False, "--modules", help="Also print the per-module table (rank, alpha, norm)."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG bar chart of per-block weight norms."),
    allow_no_fit: bool = typer.Option(False, "--allow-no-fit",
                                      help="Report a file that fits none of the models checked (a warning, exit 0) "
                                           "instead of failing with exit status 2."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Layout, the model it fits, ranks and alphas, per-block weight norms, and warnings.

    Exits with status 2 when the file fits none of the models checked (--model, or the known Krea 2 sizes),
    so scripts can vet files by the exit status.
    """
    from weightshop.lora.inspect import inspect_lora, plot_block_norms

    report = inspect_lora(file, model, components, require_fit=not allow_no_fit)
    if plot:
        report["plot"] = str(plot_block_norms(report["blocks"], plot, f"{file.name}: ||B A|| * alpha/rank per block"))
    emit(report, as_json)
    if as_json:
        return
    good = [f["model"] for f in report["fits"] if f["fits"]]
    bad = [f["model"] for f in report["fits"] if not f["fits"]]
    fits = (f"[green]{', '.join(good)}[/]" if good else "[red]none[/]") + (f" (not: {', '.join(bad)})" if bad else "")
    console.print(f"[bold]{file}[/]  format [bold]{report['format']}[/]  {report['modules']} modules, "
                  f"{report['parameters']:,} parameters" + ("  [bold]DoRA[/] (magnitude vectors)" if report["dora"] else ""))
    console.print(f"ranks {report['ranks']}  alphas {report['alphas']}  (alpha from {report['alpha_sources']})")
    console.print(f"fits: {fits}")
    console.print("targets: " + ", ".join(report["targets"]))
    table = Table(title="weight change per block (||B A||_F * alpha / rank)")
    for col in ("block", "modules", "norm"):
        table.add_column(col, justify="left" if col == "block" else "right")
    for b in report["blocks"]:
        table.add_row(b["block"], str(b["modules"]), f"{b['norm']:.4g}")
    console.print(table)
    if modules:
        t = Table(title="modules")
        for col in ("module", "rank", "alpha", "out x in", "norm"):
            t.add_column(col)
        for m in report["module_table"]:
            t.add_row(m["module"], str(m["rank"]), f"{m['alpha']:g}", f"{m['out']} x {m['in']}", f"{m['norm']:.4g}")
        console.print(t)
    for f in report["fits"]:
        if not f["fits"] and f["first_problem"]:
            console.print(f"[dim]{f['model']}: {f['problems']} problems, e.g. {f['first_problem']}[/]", highlight=False)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    if plot:
        console.print(f"plot: [bold]{report['plot']}[/]")


@app.command("convert")
@guarded
def convert(
    file: Path = typer.Argument(..., help="LoRA .safetensors file (any layout)."),
    to: str = typer.Option(..., "--to", help=FORMAT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Convert a LoRA between layouts; every loader of the new layout applies the same weight change."""
    from weightshop.lora.formats import convert_file, load_canonical

    source = load_canonical(file)
    path = convert_file(file, out, to)
    result = {"path": str(path), "from": source.format, "to": to, "modules": len(source.modules)}
    emit(result, as_json)
    if not as_json:
        console.print(f"{source.format} -> {to}: [bold]{path}[/] ({len(source.modules)} modules)")


@app.command("merge")
@guarded
def merge(
    lora: list[str] = typer.Argument(..., help="LoRA file(s), optionally PATH:STRENGTH."),
    model: str = typer.Option(..., "--model", "-m", help="Base model (Raw or Turbo): diffusers dir, .safetensors, hub id or built-in name."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (diffusers) or .safetensors file (single-file)."),
    layout: str = typer.Option("diffusers", help="diffusers (full pipeline directory) or single-file (official layout)."),
    strength: float = typer.Option(None, help="Strength for every LoRA given without :STRENGTH."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for a single-file model."),
    checkpoint: str = typer.Option(None, help="raw or turbo (default: detected)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fuse LoRAs into Raw or Turbo at a strength and save a full checkpoint."""
    from weightshop.lora.ops import merge_file

    result = merge_file(_requests(lora, strength), model, out, layout, components, checkpoint)
    emit(result, as_json)
    if not as_json:
        merged = ", ".join(f"{Path(l['path']).name} x{l['strength']:g}" for l in result["loras"])
        console.print(f"merged {merged} into {result['base']} ({result['checkpoint']}): [bold]{result['path']}[/]")


@app.command("extract")
@guarded
def extract(
    tuned: str = typer.Argument(..., help="Fine-tuned model (diffusers dir, .safetensors, built-in name)."),
    base: str = typer.Option(..., "--base", "-b", help="The model it was fine-tuned from."),
    rank: int = typer.Option(..., "--rank", "-r", help="LoRA rank."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    to: str = typer.Option("diffusers", "--to", help=FORMAT_HELP),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for single files."),
    method: str = typer.Option("auto", help="SVD: full, lowrank (randomized, for big modules on CPU) or auto."),
    as_json: bool = JSON_OPTION,
) -> None:
    """SVD of (fine-tuned - base) per Linear into a LoRA; reports each module's relative error."""
    from weightshop.lora.ops import extract_file

    with step_progress("") as progress:
        result = extract_file(tuned, base, out, rank, to, components, method, progress)
    emit(result, as_json)
    if not as_json:
        table = Table(title=f"rank {rank}: relative reconstruction error ||diff - B A|| / ||diff||")
        table.add_column("module")
        table.add_column("error", justify="right")
        for row in result["modules"]:
            table.add_row(row["module"], f"{row['relative_error']:.2e}")
        console.print(table)
        console.print(f"{len(result['modules'])} modules (max error {result['max_relative_error']:.2e}, "
                      f"{result['unchanged_modules']} unchanged): [bold]{result['path']}[/]")
        if result["not_representable"]:
            console.print(f"[yellow]warning:[/] {len(result['not_representable'])} non-Linear tensors changed and "
                          f"a LoRA cannot carry them (e.g. {result['not_representable'][0]})", highlight=False)


@app.command("resize")
@guarded
def resize(
    file: Path = typer.Argument(..., help="LoRA .safetensors file (any layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    rank: int = typer.Option(None, "--rank", "-r", help="Maximum rank per module."),
    energy: float = typer.Option(None, help="Keep the smallest rank holding this fraction of each module's energy."),
    to: str = typer.Option(None, "--to", help=FORMAT_HELP + " Default: the source's."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Reduce a LoRA's rank by SVD; reports each module's relative error ||delta - resized|| / ||delta||.

    The error of a module is sqrt(dropped singular values^2 / all); the kept energy (kept singular
    values^2 / all = 1 - error^2) is reported too.
    """
    from weightshop.lora.ops import resize_file

    result = resize_file(file, out, rank, energy, to)
    emit(result, as_json)
    if not as_json:
        table = Table(title="relative error ||delta - resized||_F / ||delta||_F per module")
        for col in ("module", "rank", "error", "energy kept"):
            table.add_column(col, justify="left" if col == "module" else "right")
        for row in result["modules"]:
            table.add_row(row["module"], f"{row['rank_before']} -> {row['rank_after']}", f"{row['relative_error']:.2e}",
                          f"{row['energy_kept']:.4%}")
        console.print(table)
        ranks = sorted({r["rank_after"] for r in result["modules"]})
        worst = max(result["modules"], key=lambda r: r["relative_error"])
        console.print(f"{len(result['modules'])} modules -> ranks {ranks}; relative error max "
                      f"{result['max_relative_error']:.2e} ({worst['module']}), mean {result['mean_relative_error']:.2e}; "
                      f"energy kept {result['energy_kept']:.4%} overall: [bold]{result['path']}[/]", highlight=False,
                      soft_wrap=True)


@app.command("combine")
@guarded
def combine(
    lora: list[str] = typer.Argument(..., help="LoRA files, each optionally PATH:WEIGHT."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    to: str = typer.Option("diffusers", "--to", help=FORMAT_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Combine LoRAs with weights into one (ranks concatenate: exactly the sum of their weight changes)."""
    from weightshop.lora.ops import combine_files

    result = combine_files(_requests(lora), out, to)
    emit(result, as_json)
    if not as_json:
        console.print(f"combined {len(result['sources'])} LoRAs into {result['modules']} modules "
                      f"(ranks {result['ranks']}): [bold]{result['path']}[/]")
