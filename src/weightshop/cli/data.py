"""`weightshop data ...`: check a folder of images into a manifest, edit its captions, exclude images, cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import DEVICE_HELP, JSON_OPTION, console, emit, guarded, resolve_device, step_progress

app = typer.Typer(help="Curate a training set: verdicts, fixes, duplicates, watermarks, captions, buckets.",
                  no_args_is_help=True)

VERDICT_STYLE = {"ok": "green", "fixed": "cyan", "warning": "yellow", "rejected": "red"}


def _print_summary(manifest: dict, out: Path, report: Path) -> None:
    from weightshop.data import summary_rows

    table = Table(title=f"{len(manifest['items'])} images: " + ", ".join(
        f"[{VERDICT_STYLE[k]}]{v} {k}[/]" for k, v in manifest["counts"].items()))
    rows = summary_rows(manifest)
    for col in ("file", "verdict", "size", "bucket", "tokens", "notes"):
        table.add_column(col, overflow="fold")
    for row in rows:
        style = VERDICT_STYLE.get(row["verdict"], "")
        table.add_row(*(str(row[c]) for c in ("file", "verdict", "size", "bucket", "tokens")),
                      str(row["notes"]), style=style)
    console.print(table)
    console.print(f"manifest: [bold]{out / 'dataset.json'}[/]  report: [bold]{report}[/]")


@app.command("check")
@guarded
def check(
    source: Path = typer.Argument(..., help="Folder of images (+ name.txt captions), or metadata.jsonl / .csv."),
    out: Path = typer.Option(Path("weightshop-out/data"), "--out", "-o", help="Where dataset.json and report.html go."),
    model: str = typer.Option(None, "--model", "-m", help="Model the set is for: sets bucket multiple, area, tokenizer."),
    resolution: int = typer.Option(None, help="Target side: buckets hold about resolution^2 pixels."),
    trigger: str = typer.Option(None, help="Trigger phrase every caption must contain."),
    near_threshold: int = typer.Option(6, help="Perceptual-hash distance (of 64 bits) that counts as a near duplicate."),
    max_aspect: float = typer.Option(4.0, help="Aspect ratios beyond this get a warning."),
    upscale: bool = typer.Option(False, help="Allow upscaling small images into their bucket."),
    ocr: bool = typer.Option(True, help="Look for text / watermarks with OCR (rapidocr)."),
    features: bool = typer.Option(True, help="Find near duplicates that a crop, rescale or re-save hides from the "
                                  "perceptual hash, with image features (EfficientNet-Lite0; --no-features is faster)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Check a folder: a verdict per image (ok / fixed / warning / rejected) with reasons, a manifest, a report.

    The source folder is never modified.
    """
    from weightshop.data import check_dataset, write_manifest, write_report
    from weightshop.data.limits import model_limits

    limits = model_limits(model)
    area = resolution * resolution if resolution else limits["area"]
    with step_progress("check") as progress:
        manifest = check_dataset(source, target_area=area, multiple=limits["multiple"], trigger=trigger,
                                 tokenizer=limits["tokenizer"], max_caption_tokens=limits["max_tokens"],
                                 near_duplicate_threshold=near_threshold, ocr=ocr, max_aspect=max_aspect,
                                 upscale=upscale, features=features,
                                 progress=lambda d, t, f: progress("images", d, t))
    if model:
        manifest["model"] = model
    write_manifest(manifest, out / "dataset.json")
    report = write_report(manifest, source, out)
    emit({"manifest": str(out / "dataset.json"), "report": str(report), "counts": manifest["counts"],
          "duplicates": manifest["duplicates"], "buckets": manifest["buckets"]}, as_json)
    if not as_json:
        _print_summary(manifest, out, report)


@app.command("caption")
@guarded
def caption(
    manifest_path: Path = typer.Argument(..., metavar="MANIFEST", help="dataset.json written by `data check`."),
    trigger: str = typer.Option(None, help="Insert this trigger phrase (once) into every caption."),
    mode: str = typer.Option("prefix", help="Where the trigger goes: prefix, suffix or template."),
    template: str = typer.Option(None, help="Caption template, e.g. '{trigger}, {caption}'."),
    replace: list[str] = typer.Option(None, "--replace", help="OLD=NEW find-and-replace (repeatable)."),
    regex: bool = typer.Option(False, help="Treat --replace patterns as regular expressions."),
    auto: Path = typer.Option(None, help="Auto-caption missing captions with Qwen3-VL from this local folder."),
    overwrite: bool = typer.Option(False, help="With --auto: replace existing captions too."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Edit the captions in a manifest (never the source files); verdicts are refreshed."""
    from weightshop.data import apply_caption_edits, read_manifest, write_manifest
    from weightshop.errors import WeightshopError

    from weightshop.data.limits import model_limits

    manifest = read_manifest(manifest_path)
    limits = model_limits(manifest.get("model"))
    pairs = []
    for text in replace or []:
        if "=" not in text:
            raise WeightshopError(f"--replace {text!r}: expected OLD=NEW")
        old, new = text.split("=", 1)
        pairs.append((old, new))
    if auto is not None:
        from weightshop.data import Qwen3VLCaptioner, autocaption

        captioner = Qwen3VLCaptioner(auto)  # checks the folder before any image is read
        with step_progress("caption") as progress:
            autocaption(manifest, captioner, overwrite=overwrite, tokenizer=limits["tokenizer"],
                        max_caption_tokens=limits["max_tokens"], progress=lambda d, t, f: progress("images", d, t))
    apply_caption_edits(manifest, trigger=trigger, trigger_mode=mode, template=template, replace=pairs or None,
                        regex=regex, tokenizer=limits["tokenizer"], max_caption_tokens=limits["max_tokens"])
    write_manifest(manifest, manifest_path)
    emit({"manifest": str(manifest_path), "counts": manifest["counts"]}, as_json)
    if not as_json:
        console.print(f"updated {manifest_path}: {manifest['counts']}")


@app.command("exclude")
@guarded
def exclude(
    manifest_path: Path = typer.Argument(..., metavar="MANIFEST", help="dataset.json written by `data check`."),
    files: list[str] = typer.Argument(None, help="Files to exclude, named as in the manifest."),
    reason: list[str] = typer.Option(None, "--reason", help="Exclude every usable image whose reasons contain this "
                                     "phrase, e.g. 'repeated mark' or 'blurry' (repeatable)."),
    why: str = typer.Option("", help="Why, recorded in each image's reasons (default: what selected it)."),
    restore: bool = typer.Option(False, help="Undo: put the named (or all) excluded images back."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Leave images out of training after reading the report (the source folder is never touched)."""
    from weightshop.data import exclude_items, read_manifest, restore_items, write_manifest
    from weightshop.errors import WeightshopError

    manifest = read_manifest(manifest_path)
    if restore:
        if reason:
            raise WeightshopError("--restore takes file names (or none, for all excluded images), not --reason")
        changed = restore_items(manifest, files or ())
    else:
        changed = exclude_items(manifest, files or (), reason or (), why)
    write_manifest(manifest, manifest_path)
    emit({"manifest": str(manifest_path), "restored" if restore else "excluded": changed,
          "counts": manifest["counts"]}, as_json)
    if not as_json:
        console.print(f"{'restored' if restore else 'excluded'} {len(changed)}: {', '.join(changed) or '-'}\n"
                      f"updated {manifest_path}: {manifest['counts']} (a cache built before still serves: "
                      "training reads the usable items only)")


@app.command("cache")
@guarded
def cache(
    manifest_path: Path = typer.Argument(..., metavar="MANIFEST", help="dataset.json written by `data check`."),
    model: str = typer.Option(None, "--model", "-m", help="Model whose VAE and text encoder to use (default: the manifest's)."),
    out: Path = typer.Option(None, "--out", "-o", help="Cache directory (default: cache/ beside the manifest)."),
    dtype: str = typer.Option("bf16", help="Stored precision: bf16, fp16 or fp32."),
    batch_size: int = typer.Option(8, help="Images / captions per encoder call."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Encode latents and caption embeddings once (incremental; corrupt or stale files are rebuilt)."""
    from weightshop.data.manifest import default_cache_dir, read_manifest
    from weightshop.data.cache import build_cache
    from weightshop.errors import WeightshopError

    device = resolve_device(device)
    manifest = read_manifest(manifest_path)
    model = model or manifest.get("model")
    if not model:
        raise WeightshopError(f"{manifest_path} names no model: pass --model (the one you will train on)")
    out = out or default_cache_dir(manifest_path)
    with step_progress("encode") as progress:
        report = build_cache(manifest, model, out, dtype=dtype, batch_size=batch_size, device=device,
                             progress=progress)
    emit(report, as_json)
    if not as_json:
        console.print(f"cache {out}: {report['items']} images, {report['captions']} captions (empty one included); "
                      f"encoded {report['encoded_latents']} latents and {report['encoded_captions']} captions "
                      f"in {report['seconds']:.1f} s; {report['total_bytes'] / 2**20:.2f} MiB")
