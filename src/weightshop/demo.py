"""`weightshop demo`: the loop on the embedded model, one stage after another, ending in one report.

Stages present today: generate (Raw at its preset vs Turbo at its preset, probe-judged quality table
and timings on krea2-nano) and curate (a star-concept domain set with planted faults, checked,
ground-truth captioned and cached twice to show the second run is a no-op). Later stages (curate, train, transfer, evaluate, quantize, serve) each add a
step here and a section to the report. Without the trained krea2-nano weights (before the first
`weightshop nano build`), the demo runs the same path on tiny random-weight components and says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from weightshop.generate import GenerateRequest, generate
from weightshop.io import atomic_write_json
from weightshop.models.loading import ModelPair, load_pair
from weightshop.models.tiny import tiny_tokenizer, write_tiny_krea2
from weightshop.report import data_uri, image_grid, table_html, write_html

DEMO_PROMPTS = ("a large red circle on a black background", "a small blue square on a gray background",
                "a green triangle left of a yellow circle", "a purple outlined square on a navy background")
DEMO_SEEDS = (0, 1)

Progress = Callable[[str, int, int], None]  # (stage label, done, total)


def ensure_tiny_models(workdir: Path) -> tuple[Path, Path]:
    """The stand-in pair (random tiny weights), built once into workdir (idempotent)."""
    raw, turbo = workdir / "models" / "tiny-raw", workdir / "models" / "tiny-turbo"
    if not ((raw / "model_index.json").is_file() and (turbo / "model_index.json").is_file()):
        tokenizer = tiny_tokenizer()
        write_tiny_krea2(raw, checkpoint="raw", tokenizer=tokenizer)
        write_tiny_krea2(turbo, checkpoint="turbo", tokenizer=tokenizer)
    return raw, turbo


def _generate_nano(pair: ModelPair, probe_dir: Path, workdir: Path, progress: Progress,
                   prompts: int) -> tuple[dict, str]:
    from weightshop.nano.evaluate import comparison_grid, load_probe, measure

    probe = load_probe(probe_dir)
    result = measure({"raw": pair.raw, "turbo": pair.turbo}, probe, prompts=prompts, seeds=(0,),
                     progress=progress)
    grid = comparison_grid(result["examples"])
    grid_path = workdir / "generate" / "raw_vs_turbo.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)
    rows = result["rows"]
    speedup = rows[0]["seconds_per_image"] / rows[2]["seconds_per_image"]
    summary = {"table": rows, "turbo_speedup": speedup, "grid": str(grid_path)}
    captions = "".join(f"<li>{c}</li>" for c in result["captions"][:8])
    body = (table_html(rows) + f"<p>Turbo is {speedup:.1f}x faster per image. Accuracies are the probe's "
            f"judgement of {rows[0]['n']} prompts (one seed each).</p><img src='{data_uri(grid)}'>"
            f"<p>First prompts (grid columns):</p><ol>{captions}</ol>")
    return summary, body


def _generate_tiny(pair: ModelPair, workdir: Path, progress: Progress) -> tuple[dict, str]:
    request = GenerateRequest(prompts=list(DEMO_PROMPTS), seeds=list(DEMO_SEEDS), batch_size=4)
    results, rows = {}, []
    for label, model in (("raw", pair.raw), ("turbo", pair.turbo)):
        start = time.perf_counter()
        images = generate(model, request, workdir / "generate" / label,
                          on_step=lambda d, t, label=label: progress(f"generate {label}", d, t))
        seconds = time.perf_counter() - start
        results[label] = images
        rows.append({"setting": label, "steps": model.checkpoint.preset.steps,
                     "guidance": model.checkpoint.preset.guidance, "mu": images[0].record["mu"],
                     "images": len(images), "seconds_per_image": seconds / len(images)})
    grid = image_grid([[results["raw"][i].image, results["turbo"][i].image] for i in range(len(results["raw"]))],
                      col_labels=["Raw", "Turbo"], cell=96)
    grid_path = workdir / "generate" / "raw_vs_turbo.png"
    grid.save(grid_path)
    speedup = rows[0]["seconds_per_image"] / rows[1]["seconds_per_image"]
    summary = {"table": rows, "turbo_speedup": speedup, "grid": str(grid_path)}
    return summary, table_html(rows) + f"<p>Turbo is {speedup:.1f}x faster per image.</p><img src='{data_uri(grid)}'>"


def _curate(model_dir: Path, workdir: Path, progress: Progress) -> tuple[dict, str]:
    """Check a generated domain set with planted faults, caption what is missing, cache it twice."""
    from weightshop.data import autocaption, check_dataset, write_manifest, write_report
    from weightshop.data.cache import build_cache
    from weightshop.data.limits import model_limits
    from weightshop.nano.domain import ground_truth_captioner, write_domain_set

    folder = workdir / "curate" / "star"
    planted = write_domain_set(folder, "star", n=24)
    limits = model_limits(str(model_dir))
    manifest = check_dataset(folder, target_area=64 * 64, multiple=limits["multiple"], tokenizer=limits["tokenizer"],
                             max_caption_tokens=limits["max_tokens"],
                             progress=lambda d, t, f: progress("curate check", d, t))
    by_file = {i["file"]: i for i in manifest["items"]}
    expect = {"corrupt": ("rejected", "not an image"), "duplicate": ("rejected", "duplicate"),
              "watermark": ("warning", "repeated mark"), "missing_caption": (None, "caption missing")}
    caught = {}
    for fault, files in planted.items():
        verdict, words = expect[fault]
        caught[fault] = all((verdict is None or by_file[f]["verdict"] == verdict)
                            and any(words in r for r in by_file[f]["reasons"]) for f in files)
    manifest["model"] = str(model_dir)
    captioned = autocaption(manifest, ground_truth_captioner(folder), tokenizer=limits["tokenizer"],
                            max_caption_tokens=limits["max_tokens"])
    write_manifest(manifest, workdir / "curate" / "dataset.json")
    report = write_report(manifest, folder, workdir / "curate")
    first = build_cache(manifest, model_dir, workdir / "curate" / "cache",
                        progress=lambda label, d, t: progress(f"cache {label}", d, t))
    second = build_cache(manifest, model_dir, workdir / "curate" / "cache")
    summary = {"counts": manifest["counts"], "planted_faults_caught": caught,
               "auto_captioned": captioned["filled"], "cache_first_seconds": first["seconds"],
               "cache_second_seconds": second["seconds"], "cache_speedup": first["seconds"] / max(second["seconds"], 1e-9),
               "cache_second_run_encoded": second["encoded_latents"] + second["encoded_captions"],
               "cache_bytes": first["total_bytes"], "report": str(report)}
    rows = [{"fault": f, "files": ", ".join(planted[f]), "caught": caught[f]} for f in planted]
    body = (f"<p>{len(manifest['items'])} files: {manifest['counts']}. Auto-captioned from ground truth: "
            f"{captioned['filled']}. Full report: <a href='curate/report.html'>curate/report.html</a>.</p>"
            + table_html(rows)
            + f"<p>Cache: first run {first['seconds']:.2f} s ({first['encoded_latents']} latents, "
              f"{first['encoded_captions']} captions incl. the empty one); second run {second['seconds']:.3f} s, "
              f"encoded nothing, loaded no encoder ({summary['cache_speedup']:.0f}x faster).</p>")
    return summary, body


def run_demo(workdir: str | Path, progress: Progress | None = None, prompts: int = 24,
             nano_root: Path | None = None) -> dict:
    """Run every stage on krea2-nano (the committed family, or the one packaged at nano_root)."""
    from weightshop.nano import family

    workdir = Path(workdir)
    progress = progress or (lambda *_: None)
    start = time.perf_counter()
    root = Path(nano_root) if nano_root else family.WEIGHTS
    if family.installed(root):
        model_name = "krea2-nano"
        raw_dir, turbo_dir, probe_dir = family.paths(root)
        pair = load_pair(raw_dir, turbo_dir, dtype="fp32")
        generate_summary, body = _generate_nano(pair, probe_dir, workdir, progress, prompts)
    else:
        model_name = "krea2-tiny-random (plumbing only: run `weightshop nano build` for krea2-nano)"
        pair = load_pair(*ensure_tiny_models(workdir), dtype="fp32")
        generate_summary, body = _generate_tiny(pair, workdir, progress)
    curate_summary, curate_body = _curate(Path(pair.raw.source.transformer), workdir, progress)
    summary = {"model": model_name, "stages": {"generate": generate_summary, "curate": curate_summary}}
    report = write_html(workdir / "report.html", "weightshop demo", [
        ("Model", f"<p>{model_name}</p>"),
        ("Generate: Raw (52 steps, guidance 3.5) vs Turbo (8 steps, no guidance)", body),
        ("Curate: a star-concept set with planted faults (held out of nano-Raw's training)", curate_body),
    ])
    summary["seconds"] = time.perf_counter() - start
    summary["report"] = str(report)
    atomic_write_json(workdir / "report.json", summary)
    return summary
