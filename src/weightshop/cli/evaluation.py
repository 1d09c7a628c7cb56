"""`weightshop eval`: suites rendered once, judged, gated against a baseline, and a LoRA's production verdict."""

from __future__ import annotations

from pathlib import Path

import typer

from weightshop.cli.common import DEVICE_HELP, JSON_OPTION, console, emit, guarded, resolve_device, step_progress

app = typer.Typer(help="Evaluate: render a suite (cached), judge it, gate a candidate against a baseline, "
                       "and decide Turbo or Raw for a LoRA.", no_args_is_help=True)


def _train_images(path: Path | None, lora: Path | None = None):
    from weightshop.transfer.training_images import load_training_images, training_source_for_lora

    source = path or (training_source_for_lora(lora) if lora else None)
    return (load_training_images(source), source) if source else (None, None)


@app.command("run")
@guarded
def run(
    model: str = typer.Option("krea2-nano-turbo", "--model", "-m", help="Model: directory, single file, hub id or "
                                                                           "built-in name."),
    suite: str = typer.Option("krea2-nano-star", help="Suite YAML or a shipped suite (`weightshop eval suites`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for eval.json, features and report.html."),
    lora: list[str] = typer.Option(None, "--lora", help="PATH[:STRENGTH] (repeatable)."),
    concept: str = typer.Option(None, help="krea2-nano: the held-out concept the probe and geometry judge look for."),
    train_images: Path = typer.Option(None, help="Reference images (folder or dataset.json): distance, KID/FD."),
    seed_offset: int = typer.Option(0, help="Shift every seed: a second seed set (noise floor, A/A)."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for single files."),
    checkpoint: str = typer.Option(None, help="raw or turbo (default: detected)."),
    cache: Path = typer.Option(None, help="Image cache (default: image-cache/ beside --out)."),
    features: bool = typer.Option(True, help="EfficientNet-Lite0 features: diversity, KID/FD."),
    ocr: bool = typer.Option(True, help="OCR text rate on no-text prompts."),
    batch_size: int = typer.Option(1, min=1),
    dtype: str = typer.Option("auto"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Render a suite on one model (only what the cache lacks), judge every image, write eval.json + report.html."""
    from weightshop.eval.generation import LoraUse
    from weightshop.eval.harness import evaluate
    from weightshop.eval.lora import default_judges, lora_trigger
    from weightshop.eval.report import write_run_report
    from weightshop.eval.suites import load_suite
    from weightshop.lora import LoraRequest
    from weightshop.models.loading import load_model

    suite_ = load_suite(suite)
    requests = [LoraRequest.parse(text) for text in lora or []]
    references, _ = _train_images(train_images)
    m = load_model(model, components=components, checkpoint=checkpoint, dtype=dtype, device=resolve_device(device))
    judges, skipped = default_judges(Path(m.source.transformer), suite_, concept, references)
    trigger = next((t for r in requests if (t := lora_trigger(r.path))), None)
    with step_progress("render") as progress:
        result = evaluate(m, suite_, out, judges=judges, loras=[LoraUse(Path(r.path), r.strength) for r in requests],
                          trigger=trigger, seed_offset=seed_offset, cache_dir=cache, references=references,
                          features=features, ocr=ocr, batch_size=batch_size,
                          progress=lambda d, t: progress("images", d, t))
    result.skipped = skipped + result.skipped
    result.save(out)
    page = write_run_report(result, out / "report.html")
    emit({"run": str(out / "eval.json"), "report": str(page), "summary": result.summary,
          "set_metrics": result.set_metrics, "skipped": result.skipped}, as_json)
    if not as_json:
        from rich.table import Table

        table = Table(title=f"{result.model['name']} on {suite_.name} ({len(result.images)} images)")
        for col in ("metric", "mean", "95 % interval"):
            table.add_column(col)
        for name, s in result.summary.items():
            table.add_row(name, f"{s['mean']:.4f}", f"{s['lo']:.4f} .. {s['hi']:.4f}")
        for name, value in result.set_metrics.items():
            table.add_row(name, "" if value is None else f"{value:.4f}", "(set)")
        console.print(table)
        for line in result.skipped:
            console.print(f"[dim]{line}[/]", highlight=False)
        console.print(f"report: [bold]{page}[/]")


@app.command("gate")
@guarded
def gate(
    candidate: Path = typer.Argument(..., help="The candidate's evaluation folder (or eval.json)."),
    baseline: Path = typer.Argument(..., help="The baseline's evaluation folder, same suite and seeds."),
    tolerances: Path = typer.Option(None, help="A noise floor (`eval noise-floor`) or a YAML of metric: tolerance."),
    metric: list[str] = typer.Option(None, help="Gate only these metrics (repeatable)."),
    tag: str = typer.Option(None, help="Only prompts with this tag (e.g. no-trigger)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the gate's HTML report here."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Candidate vs baseline: paired differences with bootstrap intervals; exit 0 when nothing regressed, 1 when
    something did (for CI)."""
    from weightshop.eval.gate import gate as run_gate
    from weightshop.eval.gate import load_tolerances
    from weightshop.eval.harness import load_run
    from weightshop.eval.report import write_gate_report

    result = run_gate(load_run(candidate), load_run(baseline), load_tolerances(tolerances) if tolerances else None,
                      metrics=metric or None, tag=tag)
    data = result.as_dict()
    if out:
        data["report"] = str(write_gate_report(data, out))
    emit(data, as_json)
    if not as_json:
        from rich.table import Table

        table = Table(title="gate: " + ("PASS" if result.passed else "FAIL"))
        for col in ("metric", "baseline", "candidate", "diff", "interval", "tolerance", "status"):
            table.add_column(col)
        for r in result.rows:
            colour = {"regressed": "red", "improved": "green"}.get(r.status, "")
            table.add_row(r.metric, f"{r.baseline:.4f}", f"{r.candidate:.4f}", f"{r.diff:+.4f}",
                          f"{r.lo:+.4f} .. {r.hi:+.4f}", f"{r.tolerance:.4f}",
                          f"[{colour}]{r.status}[/]" if colour else r.status)
        console.print(table)
        for note in result.notes:
            console.print(f"note: {note}", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command("noise-floor")
@guarded
def noise_floor(
    first: Path = typer.Argument(..., help="An evaluation of a model."),
    second: Path = typer.Argument(..., help="The same model and suite on another seed set (--seed-offset)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to store the tolerances (JSON)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """How far each metric moves by chance: the gate's tolerances, measured and stored."""
    from weightshop.eval.gate import noise_floor as measure
    from weightshop.eval.gate import save_noise_floor
    from weightshop.eval.harness import load_run

    floor = measure(load_run(first), load_run(second))
    save_noise_floor(floor, out)
    emit(floor, as_json)
    if not as_json:
        for metric, tol in floor["tolerances"].items():
            console.print(f"{metric}: {tol:.4f}", highlight=False)
        console.print(f"noise floor: [bold]{out}[/]")


@app.command("lora")
@guarded
def lora(
    lora_path: Path = typer.Argument(..., metavar="LORA", help="The LoRA trained on Raw."),
    raw: str = typer.Option("krea2-nano", help="Raw checkpoint."),
    turbo: str = typer.Option("krea2-nano-turbo", help="Turbo checkpoint (shares Raw's VAE and text encoder)."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for single files."),
    suite: str = typer.Option("krea2-nano-star", help="Suite YAML or a shipped suite."),
    concept: str = typer.Option(None, help="krea2-nano: star or striped (the probe and geometry judges)."),
    strength: float = typer.Option(None, help="Turbo strength (default: the transfer report's recommendation beside "
                                              "the LoRA, else 1)."),
    train_images: Path = typer.Option(None, help="Training images (folder or dataset.json); default: the run's."),
    tolerances: Path = typer.Option(None, help="A noise floor or a YAML of metric: tolerance."),
    dollars_per_hour: float = typer.Option(2.5, help="GPU price, for the cost per image."),
    out: Path = typer.Option(None, "--out", "-o", help="Report folder (default: eval/ beside the LoRA)."),
    batch_size: int = typer.Option(1, min=1),
    dtype: str = typer.Option("auto"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluate a LoRA for release: Raw and Turbo with and without it, the overfitting checks, the gate on prompts
    without its trigger, and the verdict: Turbo + LoRA good enough for production, or Raw + LoRA."""
    from weightshop.eval.gate import load_tolerances
    from weightshop.eval.lora import evaluate_lora, lora_trigger
    from weightshop.io import read_json
    from weightshop.models.loading import load_pair

    if strength is None:
        recorded = read_json(lora_path.parent / "transfer" / "transfer.json")
        strength = float(recorded.get("recommended_strength", 1.0))
    references, _ = _train_images(train_images, lora_path)
    pair = load_pair(raw, turbo, components=components, dtype=dtype, device=resolve_device(device))
    out = out or lora_path.parent / "eval"
    with step_progress("eval") as progress:
        result = evaluate_lora(lora_path, out, pair=pair, suite=suite, concept=concept, strength=strength,
                               train_images=references, tolerances=load_tolerances(tolerances) if tolerances else None,
                               dollars_per_hour=dollars_per_hour, trigger=lora_trigger(lora_path),
                               batch_size=batch_size, progress=lambda label, d, t: progress(label, d, t))
    emit(result, as_json)
    if not as_json:
        v = result["verdict"]
        console.print(f"[bold]{v['headline']}[/]", highlight=False)
        for reason in v["reasons"]:
            console.print(f"  {reason}", highlight=False)
        for flag in v["flags"]:
            console.print(f"  [red]flag[/] {flag}", highlight=False)
        if result["gate"]:
            console.print(f"gate on prompts without the trigger: {'pass' if result['gate']['passed'] else 'FAIL'}")
        console.print(f"report: [bold]{result['report']}[/]")


@app.command("suites")
@guarded
def suites(
    export: str = typer.Option(None, help="Write this shipped suite to --out, to edit it."),
    out: Path = typer.Option(None, "--out", "-o"),
) -> None:
    """List the shipped suites, or export one as a starting point for your own."""
    from weightshop.eval.suites import load_suite, shipped_suites, write_suite

    if export:
        if out is None:
            raise typer.BadParameter("--export needs --out FILE.yaml")
        write_suite(load_suite(export), out)
        console.print(f"wrote {out}")
        return
    for name in shipped_suites():
        s = load_suite(name)
        console.print(f"[bold]{name}[/]: {len(s.prompts)} prompts x {len(s.seeds)} seeds. {s.about}", highlight=False)
