"""`weightshop demo`: the loop on the embedded model, one stage after another, ending in one report.

Stages present today: generate (Raw at its preset vs Turbo at its preset, probe-judged quality table and timings on
krea2-nano, and Turbo's speed against stock diffusers on the same weights), curate (a domain set of a held-out
concept, the star shape by default or striped fills, with planted faults: checked, the marked images excluded,
ground-truth captioned and cached twice to show the second run is a no-op), train (the concept's LoRA on Raw from
that cache, verified on Turbo) and transfer (the LoRA on Turbo at a strength sweep against Raw: transfer ratio,
recommended strength, what the LoRA does at strength 1 (`lora_figures`), a ComfyUI workflow) and evaluate (the
release decision: Raw and Turbo with and without the LoRA on the concept's suite, two judges, the overfitting
checks, the gate on prompts without the concept, the production verdict) and quantize (nano-Turbo in fp8, int8 and
GGUF Q8_0, each file's drift from the unquantized Turbo with and without the LoRA, the smallest file that passes the
gate chosen for what follows) and serve (that model behind `weightshop serve`'s API for a moment: one image through
the OpenAI-compatible endpoint with the LoRA, its latency and cost per image). Without the trained krea2-nano
weights (before the first `weightshop nano build`), the demo runs the same path on tiny random-weight components and
says so.
"""

from __future__ import annotations

import json
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
    from weightshop.nano.evaluate import comparison_grid, measure
    from weightshop.nano.probe import load_probe

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


def _vs_stock(pair: ModelPair, repeats: int = 3) -> tuple[dict, str]:
    """Turbo through weightshop's `generate` against stock diffusers' Krea2Pipeline on the same weights, interleaved
    (`bench.generate.measure_config`, the bench's default configuration): seconds per image and the ratio."""
    from weightshop.bench.generate import measure_config
    from weightshop.models.placement import execution_device

    model = pair.turbo
    row = measure_config(model, "eager", size=model.default_size, steps=None, batch=1, repeats=repeats, warmup=1,
                         device=str(execution_device(model.pipeline)), memory=False)
    out = {"stock_s": row["stock"]["s_per_image"], "weightshop_s": row["weightshop"]["s_per_image"],
           "x_stock": row["speedup"], "repeats": repeats}
    body = (f"<p>Turbo through weightshop: {out['weightshop_s'] * 1e3:.0f} ms per image against "
            f"{out['stock_s'] * 1e3:.0f} ms for stock diffusers' Krea2Pipeline on the same weights "
            f"(<b>{out['x_stock']:.2f}x</b>; median of {repeats}; `weightshop bench generate` measures every "
            f"configuration).</p>")
    return out, body


def curate_concept_set(model_dir: Path, workdir: Path, progress: Progress, concept: str) -> tuple[dict, str]:
    """Check a generated domain set with planted faults, caption what is missing, cache it twice."""
    from weightshop.data import autocaption, check_dataset, exclude_items, write_manifest, write_report
    from weightshop.data.cache import build_cache
    from weightshop.data.limits import model_limits
    from weightshop.nano.domain import ground_truth_captioner, write_domain_set

    folder = workdir / "curate" / concept
    planted = write_domain_set(folder, concept, n=24)
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
    # What a user does after reading the report: leave the marked images out, or the LoRA learns the mark.
    excluded = exclude_items(manifest, reasons=["repeated mark"], why="the demo leaves out what the mark check flags")
    write_manifest(manifest, workdir / "curate" / "dataset.json")
    report = write_report(manifest, folder, workdir / "curate")
    first = build_cache(manifest, model_dir, workdir / "curate" / "cache",
                        progress=lambda label, d, t: progress(f"cache {label}", d, t))
    second = build_cache(manifest, model_dir, workdir / "curate" / "cache")
    summary = {"counts": manifest["counts"], "planted_faults_caught": caught,
               "auto_captioned": captioned["filled"], "excluded": excluded, "cache_first_seconds": first["seconds"],
               "cache_second_seconds": second["seconds"], "cache_speedup": first["seconds"] / max(second["seconds"], 1e-9),
               "cache_second_run_encoded": second["encoded_latents"] + second["encoded_captions"],
               "cache_bytes": first["total_bytes"], "report": str(report)}
    rows = [{"fault": f, "files": ", ".join(planted[f]), "caught": caught[f]} for f in planted]
    body = (f"<p>{len(manifest['items'])} files: {manifest['counts']}. Auto-captioned from ground truth: "
            f"{captioned['filled']}. Left out after reading the report (`weightshop data exclude --reason "
            f"'repeated mark'`): {', '.join(excluded) or 'none'}. Full report: "
            f"<a href='curate/report.html'>curate/report.html</a>.</p>"
            + table_html(rows)
            + f"<p>Cache: first run {first['seconds']:.2f} s ({first['encoded_latents']} latents, "
              f"{first['encoded_captions']} captions incl. the empty one); second run {second['seconds']:.3f} s, "
              f"encoded nothing, loaded no encoder ({summary['cache_speedup']:.0f}x faster).</p>")
    return summary, body


# The demo's LoRA: a held-out concept on nano-Raw, sized to train in about two CPU minutes. On the tiny random
# fallback only the plumbing runs (a handful of steps). The recipe is the best of those measured on the star (rank,
# steps, lr, set and loss variants); their results, and why the star stays partly learnt, are in docs/transfer.md.
DEMO_CONCEPT = "star"
DEMO_TRAIN = {"lora": {"rank": 64, "targets": "all-linear"},
              "schedule": {"steps": 600, "batch_size": 8, "seed": 0},
              "optim": {"lr": 1e-3, "scheduler": "constant", "warmup": 20},
              "data": {"caption_dropout": 0.1},
              "output": {"save_every": 250, "keep_last": 2}}
TINY_STEPS = 6
# The transfer stage judges 96 prompts x 1 seed: nano-Raw draws nearly the same image for a prompt whatever the
# seed, so more prompts, not more seeds, give more samples (docs/transfer.md).
DEMO_JUDGE_PROMPTS = 96


def train_config(pair: ModelPair, workdir: Path, name: str, overrides: list[str] | None = None):
    """The demo's LoRA config (DEMO_TRAIN) on the curate stage's cache in workdir, the run in workdir/train/<name>;
    `overrides` as `weightshop train --set` takes them (experiments/star_recipes.py varies the recipe this way)."""
    from weightshop.train import load_config

    base = {**DEMO_TRAIN, "model": {"raw": str(pair.raw.source.transformer), "turbo": str(pair.turbo.source.transformer)},
            "data": {**DEMO_TRAIN["data"], "manifest": str(workdir / "curate" / "dataset.json"),
                     "cache": str(workdir / "curate" / "cache")},
            "output": {**DEMO_TRAIN["output"], "dir": str(workdir / "train" / name), "name": name}}
    return load_config(base=base, overrides=overrides)


def _train(pair: ModelPair, workdir: Path, progress: Progress, nano: bool, concept: str) -> tuple[dict, str]:
    """Train the concept's LoRA on Raw from the curate stage's cache (resumes if a previous demo was interrupted)."""
    from weightshop.train import train

    overrides = [] if nano else [f"schedule.steps={TINY_STEPS}", "schedule.batch_size=2"]
    cfg = train_config(pair, workdir, concept, overrides)
    result = train(cfg, progress=lambda label, d, t, m: progress(f"train {label}", d, t))
    losses = [json.loads(line)["loss"] for line in (Path(result["run"]) / "metrics.jsonl").read_text().splitlines()]
    summary = {"lora": result["lora"], "steps": result["step"], "modules": result["modules"],
               "seconds": result["seconds"], "loss_first": losses[0], "loss_last_ema": result["loss_ema"],
               "modules_injected_on_turbo": result["verified_on"]["modules_injected"]}
    body = (f"<p>rank {cfg.lora.rank} on {cfg.lora.targets} ({result['modules']} modules), {result['step']} steps of "
            f"batch {cfg.schedule.batch_size} in {result['seconds']:.0f} s; loss {losses[0]:.3f} -> "
            f"{result['loss_ema']:.3f} (EMA). Saved in the diffusers layout and reloaded into a fresh Turbo "
            f"pipeline: {result['verified_on']['modules_injected']} of {result['modules']} modules injected.</p>")
    return summary, body


def lora_figures(settings: list[dict]) -> dict:
    """What the LoRA does at strength 1, from a transfer report's rows: its concept score (the probe's hit rate)
    on Raw and on Turbo with the LoRA and without (`*_before`), Turbo's over Raw's (how much of what Raw learnt
    carries over, None when Raw shows none of it) and, with an adherence judge, how many points of the prompt's
    other attributes the LoRA costs each model (`*_adherence_drop_points`)."""
    row = {r["label"]: r for r in settings}
    raw, turbo = row["Raw + LoRA"], row["Turbo + LoRA 1"]
    raw0, turbo0 = row["Raw alone"], row["Turbo alone"]
    out = {"raw_hit_rate": raw["concept"], "turbo_hit_rate": turbo["concept"],
           "raw_hit_rate_before": raw0["concept"], "turbo_hit_rate_before": turbo0["concept"],
           "turbo_over_raw": turbo["concept"] / raw["concept"] if raw["concept"] else None}
    if "adherence" in raw:
        out["raw_adherence_drop_points"] = 100 * (raw0["adherence"] - raw["adherence"])
        out["turbo_adherence_drop_points"] = 100 * (turbo0["adherence"] - turbo["adherence"])
    return out


def _transfer(pair: ModelPair, lora: str, workdir: Path, progress: Progress, nano: bool,
              concept: str) -> tuple[dict, str]:
    """Raw -> Turbo transfer of the demo LoRA: strength sweep, ratio, recommended strength, ComfyUI export."""
    from weightshop.transfer import run_transfer

    report = run_transfer(lora, pair=pair, concept=concept, out_dir=workdir / "transfer",
                          prompt_count=DEMO_JUDGE_PROMPTS if nano else 4, seeds=(0,), batch_size=24,
                          strengths=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75) if nano else (0.5, 1.0, 1.5),
                          progress=lambda label, d, t: progress(f"transfer {label}", d, t))
    ratio, strength = report.headline()
    data = report.as_dict()
    summary = {"transfer_ratio": ratio, "recommended_strength": strength, "ratio_at_1": report.ratio_at_1,
               "scorers": report.scorers, "lora_figures": lora_figures(data["settings"]),
               "report": str(workdir / "transfer" / "transfer.html"), "comfyui": report.comfyui}
    body = (f"<p>Transfer ratio (Turbo + LoRA / Raw + LoRA, concept score) "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'} at the recommended Turbo strength {strength:g}; "
            f"judged by {', '.join(report.scorers)}. Full report: "
            f"<a href='transfer/transfer.html'>transfer/transfer.html</a>.</p>"
            + table_html([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                          for r in data["settings"]])
            + "<p>The LoRA at strength 1: concept score on Raw and Turbo with it and without (before), Turbo's over "
              "Raw's, and the points of the prompt's other attributes it costs each model.</p>"
            + table_html([{k: (round(v, 3) if isinstance(v, float) else v) for k, v in summary["lora_figures"].items()}]))
    return summary, body


def _evaluate(pair: ModelPair, lora: str, strength: float, workdir: Path, progress: Progress, nano: bool,
              concept: str) -> tuple[dict, str]:
    """The release decision on the demo LoRA: Raw and Turbo with and without it on the concept's suite, judged by the
    probe and the geometry judge, the overfitting checks against the curated training images, the gate on prompts
    without the concept, and the production verdict."""
    from weightshop.eval.lora import evaluate_lora
    from weightshop.eval.suites import nano_suite
    from weightshop.transfer.training_images import load_training_images

    suite = nano_suite(concept, subject=16, plain=8) if nano else nano_suite(concept, subject=2, plain=2)
    result = evaluate_lora(lora, workdir / "eval", pair=pair, suite=suite, concept=concept, strength=strength,
                           train_images=load_training_images(workdir / "curate" / "dataset.json"), batch_size=24,
                           real=False, progress=lambda label, d, t: progress(f"eval {label}", d, t))
    v = result["verdict"]
    summary = {"verdict": v["choice"], "headline": v["headline"], "reasons": v["reasons"], "flags": v["flags"],
               "gate_passed": None if result["gate"] is None else result["gate"]["passed"],
               "agreement": result["agreement"], "report": result["report"]}
    body = (f"<p><b>{v['headline']}</b></p><ul>" + "".join(f"<li>{r}</li>" for r in v["reasons"] + v["flags"])
            + f"</ul><p>Gate (Turbo + LoRA against Turbo on prompts without the {concept}): "
            f"{'n/a' if result['gate'] is None else 'pass' if result['gate']['passed'] else 'FAIL'}. Full report: "
            "<a href='eval/report.html'>eval/report.html</a>.</p>")
    return summary, body


# The formats the demo quantizes nano-Turbo to: ComfyUI's fp8 and int8 layouts and GGUF Q8_0.
DEMO_FORMATS = ("fp8", "int8", "q8_0")


def choose_quantized(formats: list[dict]) -> dict | None:
    """The smallest file whose drift passed the gate in every setting (with and without the LoRA), or None."""
    passed = [f for f in formats if f["passed"]]
    return min(passed, key=lambda f: f["file_bytes"]) if passed else None


def _quantize(pair: ModelPair, lora: str, strength: float, workdir: Path, progress: Progress, nano: bool,
              concept: str) -> tuple[dict, str]:
    """nano-Turbo in fp8, int8 and GGUF Q8_0: each file loaded back and rendered on the concept's suite with and
    without the LoRA, its drift from the unquantized Turbo measured and gated; the smallest file that passes is the
    model the rest of the loop (serving) runs."""
    from weightshop.eval.drift import measure_drift, table_rows
    from weightshop.eval.generation import LoraUse
    from weightshop.eval.lora import default_judges, lora_trigger
    from weightshop.eval.suites import nano_suite
    from weightshop.report import data_uri

    suite = nano_suite(concept, subject=12, plain=8) if nano else nano_suite(concept, subject=2, plain=2)
    judges, skipped = default_judges(Path(pair.turbo.source.transformer), suite, concept, None, real=False)
    summary = measure_drift(pair.turbo, list(DEMO_FORMATS), workdir / "quantize", suite=suite, judges=judges,
                            loras=[LoraUse(Path(lora), strength)], trigger=lora_trigger(lora), batch_size=24,
                            progress=lambda label, d, t: progress(f"quantize {label}", d, t))
    chosen = choose_quantized(summary["formats"])
    out = {"table": table_rows(summary), "chosen": None if chosen is None else chosen["format"],
           "chosen_path": None if chosen is None else chosen["path"], "report": summary["report"],
           "seconds": summary["seconds"], "skipped_judges": skipped}
    from weightshop.eval.drift import drift_plot

    pick = ("none passed the drift gate: the rest of the loop keeps the unquantized Turbo" if chosen is None else
            f"the rest of the loop runs <b>{chosen['format']}</b> ({chosen['file_bytes'] / 1e6:.1f} MB, "
            f"{chosen['file_bytes'] / max(chosen['reference_bytes'], 1):.0%} of the unquantized file): the smallest "
            "whose drift passed the gate with and without the LoRA")
    body = (f"<p>nano-Turbo quantized to {', '.join(DEMO_FORMATS)}, each file loaded back and rendered on "
            f"{summary['pairs']} prompt/seed pairs of the {concept} suite, against the unquantized Turbo with the same "
            f"seeds; {pick}. Full report: <a href='quantize/report.html'>quantize/report.html</a>.</p>"
            + table_html(out["table"]) + f"<img src='{data_uri(drift_plot(summary))}'>")
    return out, body


def _serve(pair: ModelPair, lora: str, strength: float, quantized: str | None) -> tuple[dict, str]:
    """The loop's end: a server started briefly on loopback with the model the quantize stage chose (the
    unquantized Turbo when no file passed), one image generated through its OpenAI-compatible API with the LoRA,
    its latency and cost per image."""
    from weightshop.models.loading import SharedComponents, load_model
    from weightshop.serve import smoke

    model = pair.turbo
    if quantized:
        pipe = pair.turbo.pipeline
        shared = SharedComponents(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_select_layers,
                                  pair.turbo.source.components)
        model = load_model(quantized, components=pair.turbo.source.components, checkpoint="turbo", dtype="fp32",
                           shared=shared)
    result = smoke(model, lora, strength, dollars_per_hour=DEMO_DOLLARS_PER_HOUR)
    summary = {"model": quantized or str(pair.turbo.source.transformer), **{
        k: result[k] for k in ("latency_s", "render_s", "cost_per_image", "dollars_per_hour", "image_bytes", "lora")}}
    body = (f"<p>weightshop serve on 127.0.0.1 with {Path(summary['model']).name}: one image through "
            f"<code>POST /v1/images/generations</code> with the LoRA at strength {strength:g} took "
            f"{result['latency_s']:.2f} s end to end ({result['render_s']:.2f} s rendering), "
            f"${result['cost_per_image']:.6f} per image at ${DEMO_DOLLARS_PER_HOUR:g}/device-hour.</p>")
    return summary, body


# The device-hour price the demo's cost per image is computed from (an on-demand cloud GPU's order of magnitude).
DEMO_DOLLARS_PER_HOUR = 2.0


def run_demo(workdir: str | Path, progress: Progress | None = None, prompts: int = 24,
             nano_root: Path | None = None, quick: bool = False, concept: str = DEMO_CONCEPT) -> dict:
    """Run every stage on krea2-nano (the committed family, or the one packaged at nano_root).

    `quick` generates, trains and sweeps at the plumbing size even on krea2-nano (`--quick`, the tests).
    `concept` is the held-out concept the LoRA learns: "striped" (a fill texture) or "star" (a new shape)."""
    from weightshop.models import builtin
    from weightshop.nano.world import HELDOUT_CONCEPTS

    if concept not in HELDOUT_CONCEPTS:
        from weightshop.errors import WeightshopError

        raise WeightshopError(f"demo concept {concept!r}: expected one of {', '.join(HELDOUT_CONCEPTS)} (the concepts "
                              "krea2-nano's Raw never saw)")

    workdir = Path(workdir)
    progress = progress or (lambda *_: None)
    start = time.perf_counter()
    root = Path(nano_root) if nano_root else builtin.WEIGHTS
    if builtin.installed(root):
        model_name = "krea2-nano"
        raw_dir, turbo_dir, probe_dir = builtin.paths(root)
        pair = load_pair(raw_dir, turbo_dir, dtype="fp32")
        generate_summary, body = _generate_nano(pair, probe_dir, workdir, progress, min(prompts, 2) if quick else prompts)
    else:
        model_name = "krea2-tiny-random (plumbing only: run `weightshop nano build` for krea2-nano)"
        pair = load_pair(*ensure_tiny_models(workdir), dtype="fp32")
        generate_summary, body = _generate_tiny(pair, workdir, progress)
    nano = model_name == "krea2-nano" and not quick
    generate_summary["vs_stock"], speed_body = _vs_stock(pair)
    body += speed_body
    curate_summary, curate_body = curate_concept_set(Path(pair.raw.source.transformer), workdir, progress, concept)
    train_summary, train_body = _train(pair, workdir, progress, nano, concept)
    transfer_summary, transfer_body = _transfer(pair, train_summary["lora"], workdir, progress, nano, concept)
    eval_summary, eval_body = _evaluate(pair, train_summary["lora"], transfer_summary["recommended_strength"], workdir,
                                        progress, nano, concept)
    quantize_summary, quantize_body = _quantize(pair, train_summary["lora"], transfer_summary["recommended_strength"],
                                                workdir, progress, nano, concept)
    serve_summary, serve_body = _serve(pair, train_summary["lora"], transfer_summary["recommended_strength"],
                                       quantize_summary["chosen_path"])
    summary = {"model": model_name, "concept": concept, "stages": {"generate": generate_summary, "curate": curate_summary,
                                               "train": train_summary, "transfer": transfer_summary,
                                               "eval": eval_summary, "quantize": quantize_summary,
                                               "serve": serve_summary}}
    report = write_html(workdir / "report.html", "weightshop demo", [
        ("Model", f"<p>{model_name}</p>"),
        (f"Generate: Raw ({pair.raw.checkpoint.preset.steps} steps, guidance {pair.raw.checkpoint.preset.guidance:g}) "
         f"vs Turbo ({pair.turbo.checkpoint.preset.steps} steps, no guidance)", body),
        (f"Curate: a {concept}-concept set with planted faults (held out of nano-Raw's training)", curate_body),
        (f"Train: a {concept} LoRA on Raw, from the cache", train_body),
        ("Transfer: the LoRA on Turbo, strength sweep against Raw", transfer_body),
        ("Evaluate: the release decision", eval_body),
        ("Quantize: nano-Turbo in fp8, int8 and GGUF Q8_0, and what each costs", quantize_body),
        ("Serve: the chosen model behind the HTTP API, with the LoRA", serve_body),
    ])
    summary["seconds"] = time.perf_counter() - start
    summary["report"] = str(report)
    atomic_write_json(workdir / "report.json", summary)
    return summary
