"""A LoRA evaluated as a release decision: the suite on Raw and Turbo, each with and without the LoRA, judged; the
overfitting checks; the gate (the LoRA must not regress the base on prompts it was not trained for); and the
production verdict. Everything is written to one folder: four runs, lora-eval.json and report.html.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.eval import gate as gates
from weightshop.eval import overfit, verdict
from weightshop.eval.generation import LoraUse
from weightshop.eval.harness import evaluate, load_images
from weightshop.eval.suites import Suite, load_suite
from weightshop.io import atomic_write_json


def default_judges(model_dir: Path, suite: Suite, concept: str | None, references: list[Image.Image] | None,
                   real: bool = True) -> tuple[list, list[str]]:
    """The judges for a suite: on krea2-nano (a packaged family with a probe, and a suite with scenes) the probe and
    the geometry judge; with training images, the distance to them; the real tier (CLIP, DINO) when its weights are
    on this machine. Returns (judges, what was skipped and why)."""
    from weightshop.judge import ProbeScorer, TrainingSetDistance
    from weightshop.models.builtin import packaged_probe

    judges, skipped = [], []
    has_scenes = all(p.scene for p in suite.prompts)
    probe = packaged_probe(model_dir.parent)
    if concept and has_scenes and probe is not None:
        judges.append(ProbeScorer.from_dir(probe, concept))
        try:
            from weightshop.judge.geometry import GeometryJudge

            judges.append(GeometryJudge(concept))
        except (ImportError, WeightshopError) as e:
            skipped.append(f"geometry: skipped: {e}")
    elif concept:
        skipped.append("probe: skipped: it judges krea2-nano suites (shapes-world scenes) only")
    if references and len(references) >= 2:
        judges.append(TrainingSetDistance(references))
    if real:
        try:
            from weightshop.judge.real import real_judges

            found, why = real_judges({"references": references or []})
            judges += found
            skipped += why
        except ImportError as e:
            skipped.append(f"real tier: skipped: {e}")
    return judges, skipped


def concept_metric(judges: list) -> str | None:
    """The first judge that reports `concept` names the LoRA's concept figure."""
    for judge in judges:
        if judge.name in ("probe", "geometry", "image-stats"):
            return f"{judge.name}.concept"
    return None


def evaluate_lora(lora: str | Path, out_dir: str | Path, *, pair, suite: str | Path | Suite, concept: str | None = None,
                  strength: float = 1.0, raw_strength: float = 1.0, train_images: list[Image.Image] | None = None,
                  judges: list | None = None, tolerances: dict[str, float] | None = None,
                  dollars_per_hour: float = verdict.DEFAULT_DOLLARS_PER_HOUR, trigger: str | None = None,
                  batch_size: int = 1, real: bool = True,
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Evaluate `lora` on the loaded Raw/Turbo `pair` (see the module docstring). Returns lora-eval.json's content."""
    out = Path(out_dir)
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    skipped: list[str] = []
    if judges is None:
        judges, skipped = default_judges(Path(pair.raw.source.transformer), suite, concept, train_images, real)
    if not judges:
        raise WeightshopError("no judge can score this suite: give training images (--train-images), use a "
                              "krea2-nano suite with --concept, or install the real-tier weights (docs/eval.md)")
    cache = out / "image-cache"
    runs = {}
    plan = [("raw", None), ("raw", raw_strength), ("turbo", None), ("turbo", strength)]
    for checkpoint, s in plan:
        name = f"{checkpoint}{'' if s is None else '+lora'}"
        model = getattr(pair, checkpoint)
        runs[name] = evaluate(model, suite, out / name, judges=judges, trigger=trigger, cache_dir=cache,
                              loras=[] if s is None else [LoraUse(Path(lora), s)], references=train_images,
                              batch_size=batch_size,
                              progress=(lambda d, t, name=name: progress(name, d, t)) if progress else None)
    metric = concept_metric(judges)
    adherence = metric.replace(".concept", ".adherence") if metric else None
    adherence = adherence if adherence and adherence in runs["raw+lora"].metric_names() else None
    checks = {}
    memo_thresholds = None
    if train_images and len(train_images) >= 2:
        from weightshop.judge.features import feature_extractor

        embed = feature_extractor().embed
        memo_thresholds = overfit.calibrate_copies(train_images, embed)
        train_feats = embed(train_images)
    for checkpoint in ("raw", "turbo"):
        lora_run, base_run = runs[f"{checkpoint}+lora"], runs[checkpoint]
        lora_images, base_images = load_images(lora_run), load_images(base_run)
        memo = None
        if memo_thresholds is not None and lora_run.features() is not None:
            memo = overfit.memorisation(lora_images, lora_run.features(), train_images, train_feats, memo_thresholds)
        no_text = [i for i, im in enumerate(lora_run.images) if "no-text" in im["tags"]]
        marks = overfit.learned_marks([lora_images[i] for i in no_text], [base_images[i] for i in no_text],
                                      train_images)
        checks[checkpoint] = overfit.findings(lora_run, base_run, metric, memo, marks)
    gate = gates.gate(runs["turbo+lora"], runs["turbo"], tolerances, tag="no-trigger",
                      metrics=[m for m in runs["turbo"].metric_names() if m.endswith((".adherence", ".all_correct"))]
                      or None) if any("no-trigger" in p.tags for p in suite.prompts) else None
    decision = verdict.decide(
        verdict.option(runs["raw+lora"], runs["raw"], "raw", raw_strength, metric, adherence, dollars_per_hour),
        verdict.option(runs["turbo+lora"], runs["turbo"], "turbo", strength, metric, adherence, dollars_per_hour),
        {k: v["flags"] for k, v in checks.items()},
        {"concept": (tolerances or {}).get(metric, verdict.DEFAULT_TOLERANCE) if metric else verdict.DEFAULT_TOLERANCE,
         "adherence": (tolerances or {}).get(adherence, verdict.DEFAULT_TOLERANCE) if adherence else
         verdict.DEFAULT_TOLERANCE})
    result = {
        "lora": {"path": str(lora), "strength": strength, "raw_strength": raw_strength}, "suite": suite.name,
        "concept_metric": metric, "adherence_metric": adherence, "judges": {n: r for n, r in runs["raw"].judges.items()},
        "runs": {name: run.dir for name, run in runs.items()},
        "summary": {name: {m: s["mean"] for m, s in run.summary.items()} for name, run in runs.items()},
        "set_metrics": {name: run.set_metrics for name, run in runs.items()},
        "checks": checks, "gate": gate.as_dict() if gate else None, "verdict": decision.as_dict(),
        "agreement": _agreement(runs, judges), "skipped": skipped + runs["raw"].skipped,
        "dollars_per_hour": dollars_per_hour,
    }
    atomic_write_json(out / "lora-eval.json", result)
    from weightshop.eval.report import write_lora_report

    result["report"] = str(write_lora_report(result, runs, out, train_images))
    atomic_write_json(out / "lora-eval.json", result)
    return result


def _agreement(runs: dict, judges: list) -> dict | None:
    """Where two judges report the concept (probe and geometry), how often they agree per run, flagged when their
    rates part by more than the stated margin."""
    from weightshop.judge.agreement import agreement

    names = [j.name for j in judges if j.name in ("probe", "geometry")]
    if len(names) < 2:
        return None
    out = {}
    for name, run in runs.items():
        a, b = run.values(f"{names[0]}.concept", "subject"), run.values(f"{names[1]}.concept", "subject")
        keys = sorted(set(a) & set(b))
        if keys:  # a suite without subject prompts has nothing to agree on
            out[name] = agreement([a[k] for k in keys], [b[k] for k in keys])
    return out


def lora_trigger(lora: str | Path) -> str | None:
    """The trigger a `weightshop train` run recorded in the LoRA's metadata, if any."""
    from weightshop.lora.formats import load_canonical

    try:
        return json.loads(load_canonical(lora).metadata.get("weightshop", "{}")).get("trigger")
    except json.JSONDecodeError:
        return None
