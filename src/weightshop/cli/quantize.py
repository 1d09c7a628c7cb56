"""`weightshop quantize`: a Krea 2 transformer to fp8 / int8 / GGUF files, and what each costs in quality."""

from __future__ import annotations

from pathlib import Path

import typer

from weightshop.cli.common import DEVICE_HELP, JSON_OPTION, console, emit, guarded, resolve_device, step_progress

FORMAT_HELP = ("fp8 (comfy_quant, per tensor), fp8-channel (comfy_quant, per channel), fp8-scaled (ComfyUI's legacy "
               "fp8_scaled), int8 (comfy_quant, per channel), q8_0, q4_0, q4_k (GGUF). Repeatable.")


def keep_patterns(keep: list[str] | None, no_default_keep: bool) -> list[str] | None:
    """The layers kept in high precision: the family's sensitive layers (unless `no_default_keep`) plus `keep`;
    None (the exporter's default) when neither option was given."""
    from weightshop.models.spec import KREA2

    if not keep and not no_default_keep:
        return None
    return ([] if no_default_keep else list(KREA2.quant_keep)) + list(keep or [])


def output_paths(out: Path, formats: list[str]) -> dict[str, Path]:
    """One file per format: `out` itself when it is a file name for the one format asked, else files in `out`."""
    from weightshop.errors import WeightshopError
    from weightshop.quant.formats import get_format

    suffixes = {name: get_format(name).suffix for name in formats}
    if out.suffix in (".safetensors", ".gguf"):
        if len(formats) != 1:
            raise WeightshopError(f"--out {out} names one file but {len(formats)} formats were asked: give a folder")
        (name,) = formats
        if out.suffix != suffixes[name]:
            raise WeightshopError(f"--out {out}: format {name} is written as {suffixes[name]}, not {out.suffix}")
        return {name: out}
    return {name: out / f"transformer-{name}{suffixes[name]}" for name in formats}


@guarded
def quantize(
    model: str = typer.Argument(..., help="Model: diffusers dir, single file, hub id or built-in name "
                                          "(krea2-nano-turbo)."),
    formats: list[str] = typer.Option(..., "--format", "-f", help=FORMAT_HELP),
    out: Path = typer.Option(Path("quantized"), "--out", "-o",
                             help="A folder (one file per format), or a file name when one format is asked."),
    keep: list[str] = typer.Option(None, "--keep", help="Also keep these layers in high precision: a glob on "
                                                        "diffusers module names (repeatable)."),
    no_default_keep: bool = typer.Option(False, "--no-default-keep",
                                         help="Quantize the sensitive layers too (input/output projections, "
                                              "timestep and text projections), not kept by default."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for single files."),
    checkpoint: str = typer.Option(None, help="raw or turbo (default: detected)."),
    report: bool = typer.Option(False, "--report", help="Measure each format's drift against the unquantized "
                                                        "model on a suite (with and without --lora)."),
    suite: str = typer.Option("krea2-nano-star", help="--report: suite YAML or a shipped suite."),
    concept: str = typer.Option(None, help="--report on krea2-nano: the concept the probe and geometry judge "
                                           "look for (star or striped)."),
    lora: list[str] = typer.Option(None, "--lora", help="--report: PATH[:STRENGTH], measured on the quantized "
                                                        "base too (repeatable)."),
    tolerances: Path = typer.Option(None, help="--report: YAML/JSON of metric: tolerance for the drift gate."),
    batch_size: int = typer.Option(1, min=1, help="--report: images per forward pass."),
    dtype: str = typer.Option("auto", help="--report: auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write the transformer in each --format (sensitive layers kept in high precision); with --report, render a
    suite on each file and on the original and report the drift: PSNR/SSIM, feature and distribution distance,
    the judges' gate, per-layer weight error, sizes."""
    from weightshop.quant.formats import get_format

    for name in formats:
        if not get_format(name).is_file:
            from weightshop.errors import WeightshopError

            raise WeightshopError(f"--format {name}: an in-memory format (training's base), not a file format")
    patterns = keep_patterns(keep, no_default_keep)
    if report:
        _report(model, formats, out, patterns, components, checkpoint, suite, concept, lora, tolerances, batch_size,
                dtype, resolve_device(device), as_json)
        return
    from weightshop.models.quantized import export_transformer

    results = []
    paths = output_paths(out, formats)
    with step_progress("quantize") as progress:
        for i, name in enumerate(formats):
            progress(f"quantize {name}", i, len(formats))
            r = export_transformer(model, name, paths[name], components=components, keep=patterns)
            results.append({"format": name, "path": str(r.path), "file_bytes": r.file_bytes,
                            "source_bytes": r.source_bytes, "quantized_layers": len(r.quantized),
                            "kept_layers": list(r.kept),
                            "max_layer_error": max(r.errors.values(), default=0.0)})
            progress(f"quantize {name}", i + 1, len(formats))
    emit({"files": results}, as_json)
    if as_json:
        return
    from rich.table import Table

    table = Table(title=f"{model}: quantized")
    for col in ("format", "file", "MB", "of source", "layers quantized", "kept", "max layer error"):
        table.add_column(col)
    for r in results:
        table.add_row(r["format"], r["path"], f"{r['file_bytes'] / 1e6:.1f}",
                      f"{r['file_bytes'] / max(r['source_bytes'], 1):.2f}", str(r["quantized_layers"]),
                      str(len(r["kept_layers"])), f"{r['max_layer_error']:.4f}")
    console.print(table)


def _report(model, formats, out, patterns, components, checkpoint, suite, concept, lora, tolerances, batch_size,
            dtype, device, as_json) -> None:
    from weightshop.eval.drift import measure_drift, table_rows
    from weightshop.eval.gate import load_tolerances
    from weightshop.eval.generation import LoraUse
    from weightshop.eval.lora import default_judges, lora_trigger
    from weightshop.eval.suites import load_suite
    from weightshop.lora import LoraRequest
    from weightshop.models.loading import resolve_source

    if out.suffix in (".safetensors", ".gguf"):
        from weightshop.errors import WeightshopError

        raise WeightshopError(f"--report writes a folder (files, renders, report.html): --out {out} is a file name")
    suite_ = load_suite(suite)
    requests = [LoraRequest.parse(text) for text in lora or []]
    source = resolve_source(model, components, checkpoint)
    judges, skipped = default_judges(Path(source.transformer), suite_, concept, None)
    trigger = next((t for r in requests if (t := lora_trigger(r.path))), None)
    with step_progress("drift") as progress:
        summary = measure_drift(model, formats, out, suite=suite_, judges=judges, components=components,
                                checkpoint=checkpoint, keep=patterns,
                                loras=[LoraUse(Path(r.path), r.strength) for r in requests], trigger=trigger,
                                tolerances=load_tolerances(tolerances) if tolerances else None, dtype=dtype,
                                device=device, batch_size=batch_size, progress=progress)
    summary["skipped_judges"] = skipped
    emit(summary, as_json)
    if as_json:
        return
    from rich.table import Table

    columns = ("format", "lora", "file MB", "size vs ref", "peak vs ref", "PSNR dB", "SSIM", "feature dist",
               "adherence delta", "gate")
    rows = [{k: r[k] for k in columns} for r in table_rows(summary)]
    table = Table(title=f"{summary['model']}: drift against the unquantized model ({summary['pairs']} pairs)")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r.values()))
    console.print(table)
    for line in skipped:
        console.print(f"note: {line}", highlight=False)
    console.print(f"report: [bold]{summary['report']}[/]")
