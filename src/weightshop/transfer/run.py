"""Raw vs Turbo strength sweep for a LoRA trained on Raw: render, score, recommend, report, export.

The same prompts x seeds are rendered in four kinds of setting: Raw + LoRA (Raw's preset), Turbo + LoRA at
every strength of the sweep (Turbo's preset), Turbo alone and Raw alone. Raw and Turbo share one VAE and
text encoder (prompts are encoded once for both); each pipeline loads the LoRA once (verified by
apply_loras) and the sweep changes its strength with set_adapters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.judge import ADHERENCE, CONCEPT, MARGIN_POINTS, Job, Judge, agreement, means, ratios_part
from weightshop.transfer.sweep import (DEFAULT_STRENGTHS, DEFAULT_TOLERANCE_POINTS, Recommendation, SweepPoint,
                                       parse_strengths, recommend_strength, transfer_ratio)

Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass(frozen=True)
class Setting:
    label: str
    checkpoint: str  # "raw" or "turbo"
    strength: float | None  # None: without the LoRA


def settings_for(strengths: Sequence[float], raw_strength: float = 1.0) -> list[Setting]:
    """The report's rows, in order: Raw + LoRA, Turbo + LoRA by increasing strength, Turbo alone, Raw alone."""
    return ([Setting("Raw + LoRA", "raw", raw_strength)]
            + [Setting(f"Turbo + LoRA {s:g}", "turbo", s) for s in strengths]
            + [Setting("Turbo alone", "turbo", None), Setting("Raw alone", "raw", None)])


@dataclass
class SettingResult:
    setting: Setting
    metrics: dict[str, float]
    seconds: float
    images: list[Image.Image] = field(repr=False, default_factory=list)
    agreement: dict[str, dict] = field(default_factory=dict)  # judge name -> judge.agreement with the first judge

    def as_dict(self) -> dict:
        return {"label": self.setting.label, "checkpoint": self.setting.checkpoint,
                "strength": self.setting.strength, "seconds": self.seconds, **self.metrics}


@dataclass
class TransferReport:
    """Everything a transfer run found. `transfer_ratio` and `recommended_strength` are the headline."""

    lora: dict
    models: dict
    scorers: list[str]
    concept: str | None
    jobs: list[Job]
    results: list[SettingResult]
    sweep: list[dict]
    recommendation: Recommendation
    transfer_ratio: float | None  # Turbo + LoRA at the recommended strength over Raw + LoRA (concept scores)
    ratio_at_1: float | None  # the same at strength 1 (None when 1 is not in the sweep)
    tolerance_points: float
    steps: dict
    notes: list[str] = field(default_factory=list)
    files: dict = field(default_factory=dict)
    comfyui: dict = field(default_factory=dict)
    seconds: float = 0.0
    judges: dict = field(default_factory=dict)  # each judge's identity, figures and agreement (judge_figures)

    @property
    def recommended_strength(self) -> float:
        return self.recommendation.strength

    def headline(self) -> tuple[float | None, float]:
        """(transfer ratio at the recommended strength, recommended Turbo strength)."""
        return self.transfer_ratio, self.recommended_strength

    def result(self, label: str) -> SettingResult:
        return next(r for r in self.results if r.setting.label == label)

    def as_dict(self) -> dict:
        return {
            "lora": self.lora, "models": self.models, "scorers": self.scorers, "concept": self.concept,
            "prompts": list(dict.fromkeys(j.prompt for j in self.jobs)),
            "seeds": list(dict.fromkeys(j.seed for j in self.jobs)),
            "settings": [r.as_dict() for r in self.results], "sweep": self.sweep,
            "recommended_strength": self.recommended_strength, "transfer_ratio": self.transfer_ratio,
            "ratio_at_1": self.ratio_at_1, "recommendation": self.recommendation.as_dict(),
            "tolerance_points": self.tolerance_points, "steps": self.steps, "notes": self.notes,
            "files": self.files, "comfyui": self.comfyui, "seconds": self.seconds, "judges": self.judges,
        }


# --- inputs ------------------------------------------------------------------------------------------


def _lora_info(path: Path) -> dict:
    import json

    from weightshop.io import cached_sha256
    from weightshop.lora.formats import load_canonical

    # the one LoRA reader: any layout, and the same errors as every other load (no LoRA tensors, truncated, ...)
    metadata = load_canonical(path).metadata
    try:
        info = json.loads(metadata.get("weightshop", "{}"))
    except json.JSONDecodeError:
        info = {}
    return {"path": str(path), "sha256": cached_sha256(path), "trigger": info.get("trigger"),
            "base_model": info.get("base_model"), "rank": info.get("rank"), "steps": info.get("steps")}


def make_jobs(prompts: Sequence[str] | None, concept: str | None, seeds: Sequence[int], prompt_count: int,
              trigger: str | None = None) -> tuple[list[Job], list[str]]:
    """(jobs, notes). With a concept and no prompts, captions of shapes-world scenes of the concept, made the
    way the concept's training captions were (world.caption), so the probe has ground truth for each."""
    from weightshop.data.captions import apply_trigger, has_trigger

    if not seeds:
        raise WeightshopError("give at least one seed (--seeds 0,1)")
    notes = []
    if prompts:
        pairs = [(p, None) for p in prompts]
    elif concept:
        from weightshop.nano import world

        if concept not in world.HELDOUT_CONCEPTS:
            raise WeightshopError(f"unknown concept {concept!r}: expected one of {', '.join(world.HELDOUT_CONCEPTS)} "
                                  "(or give your own prompts with --prompts FILE)")
        if prompt_count < 1:
            raise WeightshopError(f"prompt count must be >= 1, got {prompt_count}")
        pairs = [(text, scene) for scene, text in world.prompt_suite(prompt_count, seed=0, heldout=concept)]
    else:
        raise WeightshopError("give prompts (--prompts FILE) or a concept (--concept star|striped) to render")
    if trigger:
        missing = {p for p, _ in pairs if not has_trigger(p, trigger)}
        if missing:
            pairs = [(apply_trigger(p, trigger), s) for p, s in pairs]
            notes.append(f"the LoRA's trigger {trigger!r} was put in front of {len(missing)} prompt(s) that lacked "
                         "it, as `weightshop data caption --trigger` did for the training captions")
    first: dict[str, object] = {}
    for p, scene in pairs:  # each prompt once (with its first scene): generate renders a prompt once per seed
        first.setdefault(p, scene)
    pairs = list(first.items())
    return [Job(p, seed, scene) for p, scene in pairs for seed in dict.fromkeys(seeds)], notes


# What the probe's judgement of a concept does not say, added to the report's notes (docs/transfer.md, "The striped
# fill").
PROBE_CAVEATS = {
    "striped": "striped: krea2-nano's VAE cannot reproduce the 4 px stripes (its own round trip of a striped render "
               "is a hazy fill, which the probe calls striped), so this hit rate says the images carry what the VAE "
               "makes of striped training images, not that stripes are visible",
}


def second_judges(concept: str, notes: list[str]) -> list:
    """The judges that check the probe on krea2-nano: the geometry judge for the concepts it measures (the star),
    which learns nothing from the shapes world; a note says why when there is none."""
    from weightshop.judge import GeometryJudge

    if concept not in GeometryJudge.CONCEPTS:
        notes.append(f"{concept}: judged by the probe alone; the geometry judge cannot measure it (stripes do not "
                     "survive krea2-nano's VAE at 64 px)")
        return []
    try:
        return [GeometryJudge(concept)]
    except WeightshopError as e:  # OpenCV missing
        notes.append(f"no second judge: {e}")
        return []


def default_scorers(concept: str | None, raw_root: Path | None, train_images, lora: Path) -> tuple[list, list[str]]:
    """The probe on krea2-nano (when a concept is named) and beside it the geometry judge (second_judges), then the
    training-set distance when images are known (given, or the manifest of the `weightshop train` run that wrote
    the LoRA)."""
    from weightshop.judge import ProbeScorer, TrainingSetDistance
    from weightshop.transfer.training_images import load_training_images, training_source_for_lora

    scorers, notes = [], []
    if concept and raw_root is not None:
        from weightshop.models.builtin import packaged_probe

        probe_dir = packaged_probe(raw_root)
        if probe_dir is not None:
            scorers.append(ProbeScorer.from_dir(probe_dir, concept))
            if concept in PROBE_CAVEATS:
                notes.append(PROBE_CAVEATS[concept])
            scorers += second_judges(concept, notes)
    source = Path(train_images) if train_images else training_source_for_lora(lora)
    if source is not None:
        scorers.append(TrainingSetDistance(load_training_images(source), source=str(source)))
        notes.append(f"training images for the generic judge: {source}")
    if not scorers:
        raise WeightshopError(
            "no way to score this model: it has no probe (krea2-nano with --concept star|striped has one), and no "
            f"training images were given or found beside {lora} (pass --train-images DIR or the dataset.json "
            "the LoRA was trained on)")
    return scorers, notes


# --- rendering ---------------------------------------------------------------------------------------


def _render(model, jobs: list[Job], cache, label: str, batch_size: int, steps: int | None,
            progress: Progress | None) -> tuple[list[Image.Image], float]:
    from weightshop.generate import GenerateRequest, generate

    prompts = list(dict.fromkeys(j.prompt for j in jobs))
    seeds = list(dict.fromkeys(j.seed for j in jobs))
    request = GenerateRequest(prompts=prompts, seeds=seeds, batch_size=batch_size, steps=steps)
    start = time.perf_counter()
    images = generate(model, request, prompt_cache=cache,
                      on_step=(lambda d, t: progress(label, d, t)) if progress else None)
    return [g.image for g in images], time.perf_counter() - start


def render_settings(pair, lora: Path, jobs: list[Job], settings: list[Setting], *, batch_size: int = 1,
                    steps_override: int | None = None, progress: Progress | None = None) -> dict[str, tuple]:
    """label -> (images, seconds). Each pipeline renders without the LoRA first, then loads it once and
    changes only its strength; the adapters are deleted afterwards, leaving the pair as it was."""
    from weightshop.generate.text import PromptCache
    from weightshop.lora import LoraRequest, apply_loras

    raw = pair.raw
    cache = PromptCache(raw.pipeline, raw.max_sequence_length, str(raw.source.components))
    cache.warm(list(dict.fromkeys(j.prompt for j in jobs)))  # shared encoder: once for both checkpoints
    out = {}
    for checkpoint in ("raw", "turbo"):
        model = getattr(pair, checkpoint)
        mine = [s for s in settings if s.checkpoint == checkpoint]
        for s in (s for s in mine if s.strength is None):
            out[s.label] = _render(model, jobs, cache, s.label, batch_size, steps_override, progress)
        with_lora = [s for s in mine if s.strength is not None]
        if not with_lora:
            continue
        applied = apply_loras(model.pipeline, [LoraRequest(lora, with_lora[0].strength)])
        try:
            for s in with_lora:
                model.pipeline.set_adapters([applied[0].name], adapter_weights=[s.strength])
                out[s.label] = _render(model, jobs, cache, s.label, batch_size, steps_override, progress)
        finally:
            model.pipeline.delete_adapters([a.name for a in applied])
    return out


# --- the sweep ---------------------------------------------------------------------------------------


def summarise(results: list[SettingResult], tolerance_points: float) -> tuple[list[dict], Recommendation,
                                                                                 float | None, float | None]:
    """(sweep rows, recommendation, ratio at the recommended strength, ratio at strength 1)."""
    by_label = {r.setting.label: r for r in results}
    raw_lora, turbo_alone = by_label["Raw + LoRA"].metrics, by_label["Turbo alone"].metrics
    raw_lift = raw_lora[CONCEPT] - by_label["Raw alone"].metrics[CONCEPT]
    points, rows = [], []
    for r in results:
        if r.setting.checkpoint != "turbo" or r.setting.strength is None:
            continue
        m = r.metrics
        points.append(SweepPoint(r.setting.strength, m[CONCEPT], m.get(ADHERENCE)))
        rows.append({"strength": r.setting.strength, CONCEPT: m[CONCEPT], ADHERENCE: m.get(ADHERENCE),
                     "transfer_ratio": transfer_ratio(m[CONCEPT], raw_lora[CONCEPT]),
                     "turbo_lift": m[CONCEPT] - turbo_alone[CONCEPT],
                     "lift_ratio": transfer_ratio(m[CONCEPT] - turbo_alone[CONCEPT], raw_lift)})
    recommendation = recommend_strength(points, turbo_alone.get(ADHERENCE), tolerance_points)
    at = {row["strength"]: row["transfer_ratio"] for row in rows}
    return rows, recommendation, at[recommendation.strength], at.get(1.0)


def counts_presence(scorer, concept: str | None) -> bool:
    """Whether a judge counts the run's concept image by image (the probe, the geometry judge: they name the concept
    they look for). Such a judge's per-image hits are kept, for the agreement between judges, and its set figures
    are their means (judge.base.means, which is what their `score` returns)."""
    return concept is not None and getattr(scorer, "concept", None) == concept


def score_setting(setting: Setting, images: list[Image.Image], seconds: float, jobs: list[Job], scorers: list,
                  concept: str | None) -> SettingResult:
    """One setting's metrics: the first judge's under their own names (`concept`, `adherence`: what the sweep and the
    recommendation read), every other judge's as `<judge>.<metric>`; each judge that counts the concept beside the
    first one also gets `<judge>.agreement` (judge.agreement with the first judge, in full in `agreement`)."""
    metrics, per_image = {}, {}
    for i, scorer in enumerate(scorers):
        if counts_presence(scorer, concept):
            per_image[i] = scorer.per_image(images, jobs)
            scored = means(per_image[i])
        else:
            scored = scorer.score(images, jobs)
        metrics.update(scored if i == 0 else {f"{scorer.name}.{k}": v for k, v in scored.items()})
    if CONCEPT not in metrics:
        raise WeightshopError(f"scorer {scorers[0].name!r} returned no {CONCEPT!r} metric")
    agreements = {}
    if 0 in per_image:
        for i in (i for i in per_image if i > 0):
            agreements[scorers[i].name] = agreement(per_image[0], per_image[i], MARGIN_POINTS)
            metrics[f"{scorers[i].name}.agreement"] = agreements[scorers[i].name]["agreement"]
    return SettingResult(setting, metrics, seconds, images, agreements)


def judge_figures(results: list[SettingResult], rows: list[dict], scorers: list, strength: float) -> dict:
    """Every judge's view of the run, for the report: its identity, its concept figure per setting and its transfer
    ratio at the recommended strength (chosen by the first judge) and at strength 1; and for each judge that counts
    the concept beside the first, their agreement per setting, the settings where their rates part by more than the
    margin, and whether their transfer ratios do. The sweep rows gain `<judge>.transfer_ratio`."""
    by_label = {r.setting.label: r for r in results}
    raw = by_label["Raw + LoRA"].metrics
    turbo = {r.setting.strength: r.metrics for r in results
             if r.setting.checkpoint == "turbo" and r.setting.strength is not None}
    figures = {}
    for i, scorer in enumerate(scorers):
        key = CONCEPT if i == 0 else f"{scorer.name}.{CONCEPT}"
        if key not in raw:
            continue
        ratio = {s: transfer_ratio(m.get(key), raw[key]) for s, m in turbo.items()}
        if i > 0:
            for row in rows:
                row[f"{scorer.name}.transfer_ratio"] = ratio[row["strength"]]
        figures[scorer.name] = {"concept": {r.setting.label: r.metrics.get(key) for r in results},
                                "transfer_ratio": ratio[strength], "ratio_at_1": ratio.get(1.0)}
    first = scorers[0].name
    pairs = {}
    for name in dict.fromkeys(n for r in results for n in r.agreement):
        settings = {r.setting.label: r.agreement[name] for r in results if name in r.agreement}
        pairs[name] = {"settings": settings, "flagged_settings": [label for label, a in settings.items() if a["flag"]],
                       "transfer_ratio": ratios_part(figures[first]["transfer_ratio"], figures[name]["transfer_ratio"]),
                       "ratio_at_1": ratios_part(figures[first]["ratio_at_1"], figures[name]["ratio_at_1"])}
    return {"first": first, "margin_points": MARGIN_POINTS,
            "identities": {s.name: s.identity.as_dict() for s in scorers if hasattr(s, "identity")},
            "figures": figures, "agreement": pairs}


def judge_notes(judges: dict) -> list[str]:
    """One note per second judge whose transfer ratio or concept rates part from the first judge's by more than the
    margin (the report's notes, so every view of the report shows them)."""
    notes, first, margin = [], judges["first"], judges["margin_points"]
    for name, pair in judges["agreement"].items():
        ours, theirs = judges["figures"][first]["transfer_ratio"], judges["figures"][name]["transfer_ratio"]
        if pair["transfer_ratio"]["flag"]:
            shown = lambda r: "undefined" if r is None else f"{r:.2f}"  # noqa: E731
            notes.append(f"the judges part on the transfer ratio: {first} {shown(ours)}, {name} {shown(theirs)} (more "
                         f"than the {margin:g}-point margin); read the grid before trusting either")
        if pair["flagged_settings"]:
            notes.append(f"{first} and {name} concept rates part by more than {margin:g} points in: "
                         + ", ".join(pair["flagged_settings"]))
    return notes


def run_transfer(lora: str | Path, *, raw: str | Path = "krea2-nano", turbo: str | Path = "krea2-nano-turbo",
                 components: str | Path | None = None, pair=None,
                 strengths: Sequence[float] | str = DEFAULT_STRENGTHS, prompts: Sequence[str] | None = None,
                 concept: str | None = None, prompt_count: int = 16, seeds: Sequence[int] = (0, 1),
                 out_dir: str | Path | None = None, train_images: str | Path | None = None,
                 scorers: list[Judge] | None = None, tolerance_points: float = DEFAULT_TOLERANCE_POINTS,
                 raw_strength: float = 1.0, batch_size: int = 1, dtype: str = "auto", device: str = "cpu",
                 comfyui: bool = True, grid_columns: int = 16, steps_override: int | None = None,
                 progress: Progress | None = None) -> TransferReport:
    """Sweep a Raw-trained LoRA's strength on Turbo against Raw + LoRA; write the report when out_dir is given.

    `pair` reuses an already loaded Raw/Turbo pair (load_pair) instead of loading raw/turbo. `scorers`
    replaces the automatic choice (probe on krea2-nano, training-set distance otherwise). `steps_override`
    renders every setting with that many steps instead of the presets: for tests only, since it breaks
    what the comparison means (the ComfyUI export always uses Turbo's preset).
    """
    from weightshop.models.loading import load_pair, resolve_source

    start = time.perf_counter()
    lora = Path(lora)
    info = _lora_info(lora)
    strengths = parse_strengths(strengths if isinstance(strengths, str) else ",".join(str(s) for s in strengths))
    if tolerance_points < 0:
        raise WeightshopError(f"the adherence tolerance must be >= 0 points, got {tolerance_points}")
    if batch_size < 1:
        raise WeightshopError(f"batch size must be >= 1, got {batch_size}")
    jobs, notes = make_jobs(prompts, concept, list(seeds), prompt_count, info["trigger"])
    source = pair.raw.source if pair is not None else resolve_source(raw, components, "raw")
    raw_root = Path(source.transformer).parent  # a packaged nano family keeps its probe beside the models
    if scorers is None:
        scorers, found = default_scorers(concept, raw_root, train_images, lora)
        notes += found
    if pair is None:
        pair = load_pair(raw, turbo, components=components, dtype=dtype, device=device)
    settings = settings_for(strengths, raw_strength)
    rendered = render_settings(pair, lora, jobs, settings, batch_size=batch_size, steps_override=steps_override,
                               progress=progress)
    results = [score_setting(s, *rendered[s.label], jobs, scorers, concept) for s in settings]  # in row order
    rows, recommendation, ratio, ratio_at_1 = summarise(results, tolerance_points)
    judges = judge_figures(results, rows, scorers, recommendation.strength)
    notes += judge_notes(judges)
    steps = {name: steps_override or getattr(pair, name).checkpoint.preset.steps for name in ("raw", "turbo")}
    report = TransferReport(
        lora=info, models={"raw": pair.raw.source.model_id, "turbo": pair.turbo.source.model_id},
        scorers=[s.name for s in scorers], concept=concept, jobs=jobs, results=results, sweep=rows,
        recommendation=recommendation, transfer_ratio=ratio, ratio_at_1=ratio_at_1,
        tolerance_points=tolerance_points, steps=steps, notes=notes, judges=judges)
    if steps_override:
        report.notes.append(f"steps overridden to {steps_override} for every setting (test mode): not the presets")
    report.seconds = time.perf_counter() - start
    if out_dir is not None:
        from weightshop.transfer.report import write_report

        write_report(report, Path(out_dir), pair.turbo, comfyui=comfyui, grid_columns=grid_columns)
    return report
