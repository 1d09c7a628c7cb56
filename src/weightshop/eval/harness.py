"""One evaluation run: a suite rendered on one model (with its LoRAs), every image judged, the run written as
eval.json (+ the images' features) so gates and verdicts can compare runs without rendering again.

Per image: each judge's per-image metrics, named `<judge>.<metric>` (`probe.concept`, `geometry.concept`,
`image-stats.distance`, ...). Per run: the means with bootstrap intervals, and the set-level figures: diversity
across seeds, the OCR text rate on no-text prompts, and (given reference images) KID / FD and the nearest
reference's similarity from the EfficientNet-Lite0 features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.eval.generation import ImageCache, LoraUse, render
from weightshop.eval.suites import EvalJob, Suite, suite_jobs
from weightshop.io import atomic_write_json, read_json

RUN_FILE = "eval.json"
FEATURES_FILE = "features.npy"


@dataclass
class EvalRun:
    """What one evaluation measured (eval.json)."""

    model: dict  # id, name, checkpoint, transformer_sha256
    loras: list[dict]
    suite: dict  # name, sha256, seed_offset
    judges: dict[str, dict]  # name -> identity
    images: list[dict]  # id, position, seed, prompt, tags, key, file, metrics {judge.metric: value}
    summary: dict[str, dict] = field(default_factory=dict)  # metric -> {mean, lo, hi, n}
    set_metrics: dict[str, float | None] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds_per_image: float | None = None
    dir: str | None = None

    def values(self, metric: str, tag: str | None = None) -> dict[tuple[str, int], float]:
        """(prompt id, seed position) -> the metric's value, over images carrying `tag` when given."""
        return {(im["id"], im["position"]): im["metrics"][metric] for im in self.images
                if metric in im["metrics"] and (tag is None or tag in im["tags"])}

    def metric_names(self) -> list[str]:
        return sorted({m for im in self.images for m in im["metrics"]})

    def features(self) -> np.ndarray | None:
        path = Path(self.dir or ".") / FEATURES_FILE
        return np.load(path) if self.dir and path.is_file() else None

    def save(self, out_dir: str | Path) -> Path:
        self.dir = str(out_dir)
        return atomic_write_json(Path(out_dir) / RUN_FILE, asdict(self))


def load_run(path: str | Path) -> EvalRun:
    """An evaluation run from its folder or its eval.json."""
    path = Path(path)
    file = path / RUN_FILE if path.is_dir() else path
    data = read_json(file, missing=None)
    if data is None:
        raise WeightshopError(f"{file} not found: give an evaluation folder (with {RUN_FILE}) written by "
                              "`weightshop eval run`")
    try:
        run = EvalRun(**data)
    except TypeError as e:
        raise WeightshopError(f"{file} is not an evaluation run ({e})") from None
    run.dir = str(file.parent)
    return run


def summarise(images: list[dict], rng_seed: int = 0) -> dict[str, dict]:
    from weightshop.judge.stats import bootstrap_ci

    out = {}
    for metric in sorted({m for im in images for m in im["metrics"]}):
        values = np.array([im["metrics"][metric] for im in images if metric in im["metrics"]], dtype=float)
        lo, hi = bootstrap_ci(values, rng=np.random.default_rng(rng_seed))
        out[metric] = {"mean": float(values.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(values))}
    return out


def ocr_text_rate(images: list[Image.Image]) -> tuple[float | None, list[bool], str]:
    """(share of images where OCR finds text, per image, backend or why not)."""
    from weightshop.data.quality import rapidocr_backend

    backend, about = rapidocr_backend(threads=1)
    if backend is None:
        return None, [], about
    found = [bool(backend(im)) for im in images]
    return (float(np.mean(found)) if found else None), found, about


def set_level(images: list[Image.Image], jobs: list[EvalJob], features: np.ndarray | None,
              references: list[Image.Image] | None, ref_features: np.ndarray | None, ocr: bool) -> tuple[dict, list]:
    """The run's set-level figures, and what was skipped (with why)."""
    from weightshop.judge import stats

    out: dict[str, float | None] = {}
    skipped: list[str] = []
    if features is not None:
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.id, []).append(i)
        multi = [features[idx] for idx in groups.values() if len(idx) > 1]
        out["diversity"] = stats.diversity(multi) if multi else None
        if ref_features is not None and len(ref_features) >= 2:
            _, sims = stats.nearest(features, ref_features)
            out["nearest_reference_similarity"] = float(np.mean(sims))
            out["fd"] = float(stats.frechet_distance(features, ref_features))
            kid, kid_std = stats.kid(features, ref_features, subsets=50, rng=np.random.default_rng(0))
            out["kid"], out["kid_std"] = float(kid), float(kid_std)
        elif references is not None:
            skipped.append("kid/fd: fewer than 2 reference images")
    if ocr:
        no_text = [i for i, job in enumerate(jobs) if "no-text" in job.tags]
        if no_text:
            rate, _, about = ocr_text_rate([images[i] for i in no_text])
            out["ocr_text_rate"] = rate
            if rate is None:
                skipped.append(f"ocr_text_rate: {about}")
    return out, skipped


def evaluate(model, suite: Suite, out_dir: str | Path, *, judges: list | None = None, loras: list[LoraUse] = (),
             trigger: str | None = None, seed_offset: int = 0, cache_dir: str | Path | None = None,
             references: list[Image.Image] | None = None, features: bool = True, ocr: bool = True,
             batch_size: int = 1, progress: Callable[[int, int], None] | None = None, fast=None) -> EvalRun:
    """Render `suite` on `model` with `loras` (cached), judge every image, and write the run to `out_dir`.
    `fast`: how `generate` renders (`generate.fast.FastPath`; None: its defaults)."""
    out_dir = Path(out_dir)
    jobs = suite_jobs(suite, trigger, seed_offset)
    cache = ImageCache(cache_dir or out_dir.parent / "image-cache")
    earlier = read_json(out_dir / RUN_FILE, missing=None)
    images, keys, stats = render(model, jobs, cache, loras=list(loras), width=suite.width, height=suite.height,
                                 batch_size=batch_size, progress=progress, fast=fast)
    from weightshop.judge import Job

    judged = [Job(j.prompt, j.seed, j.scene) for j in jobs]
    per_image: list[dict[str, float]] = [{} for _ in jobs]
    identities = {}
    for judge in judges or []:
        identities[judge.name] = judge.identity.as_dict()
        for metric, values in judge.per_image(images, judged).items():
            for row, value in zip(per_image, values):
                row[f"{judge.name}.{metric}"] = float(value)
    feats = ref_feats = None
    skipped: list[str] = []
    if features:
        from weightshop.judge.features import feature_extractor

        extractor = feature_extractor()
        feats = extractor.embed(images)
        identities["features"] = extractor.identity.as_dict()
        ref_feats = extractor.embed(references) if references else None
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / FEATURES_FILE, feats)
    set_metrics, more = set_level(images, jobs, feats, references, ref_feats, ocr)
    skipped += more
    rows = [{"id": j.id, "position": j.position, "seed": j.seed, "prompt": j.prompt, "tags": list(j.tags), "key": k,
             "file": str(cache.path(k)), "metrics": m} for j, k, m in zip(jobs, keys, per_image)]
    run = EvalRun(
        model={"id": model.source.model_id, "name": model.name, "checkpoint": model.checkpoint.name,
               "transformer_sha256": model.transformer_hash()},
        loras=[l.as_dict() for l in loras], suite={"name": suite.name, "sha256": suite.digest(), "seed_offset": seed_offset},
        judges=identities, images=rows, summary=summarise(rows), set_metrics=set_metrics, skipped=skipped,
        seconds_per_image=stats["seconds_per_image"])
    if run.seconds_per_image is None and earlier:  # all from the cache: keep what the first render measured
        run.seconds_per_image = earlier.get("seconds_per_image")
    run.save(out_dir)
    return run


def load_images(run: EvalRun) -> list[Image.Image]:
    out = []
    for im in run.images:
        with Image.open(im["file"]) as image:
            out.append(image.convert("RGB"))
    return out
