"""`weightshop demo`: the loop on the embedded model, one stage after another, ending in one report.

Stages present today: generate (Raw at its preset vs Turbo at its preset, timed). The embedded model
is the tiny random-weight Krea 2 until krea2-nano ships; later stages (curate, train, transfer,
evaluate, quantize, serve) each add a step here and a section to the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from weightshop.generate import GenerateRequest, generate
from weightshop.io import atomic_write_json
from weightshop.models.loading import load_pair
from weightshop.models.tiny import TINY, tiny_tokenizer, write_tiny_krea2
from weightshop.report import data_uri, image_grid, table_html, write_html

DEMO_PROMPTS = ("a large red circle on a black background", "a small blue square on a gray background",
                "a green triangle left of a yellow circle", "a purple outlined square on a navy background")
DEMO_SEEDS = (0, 1)

Progress = Callable[[str, int, int], None]  # (stage label, done, total)


def ensure_embedded_models(workdir: Path) -> tuple[Path, Path]:
    """The demo's model pair, built once into workdir (idempotent)."""
    raw, turbo = workdir / "models" / "tiny-raw", workdir / "models" / "tiny-turbo"
    if not ((raw / "model_index.json").is_file() and (turbo / "model_index.json").is_file()):
        tokenizer = tiny_tokenizer()
        write_tiny_krea2(raw, checkpoint="raw", tokenizer=tokenizer)
        write_tiny_krea2(turbo, checkpoint="turbo", tokenizer=tokenizer)
    return raw, turbo


def run_demo(workdir: str | Path, progress: Progress | None = None) -> dict:
    workdir = Path(workdir)
    progress = progress or (lambda *_: None)
    raw_dir, turbo_dir = ensure_embedded_models(workdir)
    pair = load_pair(raw_dir, turbo_dir, dtype="fp32")
    request = GenerateRequest(prompts=list(DEMO_PROMPTS), seeds=list(DEMO_SEEDS), batch_size=4)
    results, rows = {}, []
    for label, model in (("raw", pair.raw), ("turbo", pair.turbo)):
        start = time.perf_counter()
        images = generate(model, request, workdir / "generate" / label,
                          on_step=lambda d, t, label=label: progress(f"generate {label}", d, t))
        seconds = time.perf_counter() - start
        results[label] = images
        rows.append({"checkpoint": label, "steps": model.checkpoint.preset.steps,
                     "guidance": model.checkpoint.preset.guidance, "mu": images[0].record["mu"],
                     "images": len(images), "seconds_per_image": seconds / len(images)})
    grid = image_grid(
        [[results["raw"][i].image, results["turbo"][i].image] for i in range(len(results["raw"]))],
        row_labels=[f"p{i // len(DEMO_SEEDS)} s{s}" for i, (_, s) in enumerate(
            (p, s) for p in DEMO_PROMPTS for s in DEMO_SEEDS)],
        col_labels=["Raw", "Turbo"], cell=96)
    grid_path = workdir / "generate" / "raw_vs_turbo.png"
    grid.save(grid_path)
    speedup = rows[0]["seconds_per_image"] / rows[1]["seconds_per_image"]
    summary = {
        "model": "krea2-tiny-random (plumbing only; krea2-nano replaces it)",
        "stages": {"generate": {"table": rows, "turbo_speedup": speedup, "grid": str(grid_path)}},
    }
    report = write_html(workdir / "report.html", "weightshop demo", [
        ("Model", f"<p>{summary['model']}, image side {TINY.size} px.</p>"),
        ("Generate: Raw (52 steps, guidance 3.5) vs Turbo (8 steps, no guidance)",
         table_html(rows) + f"<p>Turbo is {speedup:.1f}x faster per image.</p>"
         + f"<p>Prompts: {'; '.join(f'p{i}: {p}' for i, p in enumerate(DEMO_PROMPTS))}</p>"
         + f"<img src='{data_uri(grid)}'>"),
    ])
    summary["report"] = str(report)
    atomic_write_json(workdir / "report.json", summary)
    return summary
