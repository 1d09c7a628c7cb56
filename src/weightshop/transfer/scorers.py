"""How a setting's images are judged: a small interface, a probe judge (krea2-nano) and a generic one.

A scorer has a `name` and `score(images, jobs) -> {metric: value}`. Two metric names mean something to
the sweep: `concept` (how much of the LoRA's concept the images show, in [0, 1], higher is more) drives
the transfer ratio and the recommendation, and `adherence` (the fraction of the prompt's other attributes
the images get right, in [0, 1]) bounds it. Any other metric is carried into the report as it is, so the
eval harness can add judges without touching the sweep. A run calls each scorer once per setting, in the
report's row order (Raw + LoRA, Turbo + LoRA by increasing strength, Turbo alone, Raw alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from weightshop.errors import WeightshopError

CONCEPT = "concept"
ADHERENCE = "adherence"


@dataclass(frozen=True)
class Job:
    """One image to make: its prompt and seed, and the shapes-world scene it describes when known."""

    prompt: str
    seed: int
    scene: Any = None  # weightshop.nano.world.Scene: ground truth for prompt adherence


class Scorer(Protocol):
    name: str

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]: ...


# --- the probe (krea2-nano) ------------------------------------------------------------------------


def concept_present(predicted: dict[str, str], concept: str) -> bool:
    """The probe sees the concept: a star as either shape, or the striped fill (as training validation does)."""
    return concept in (predicted["shape"], predicted["shape2"], predicted["fill"])


def other_attribute_accuracy(predicted: list[dict], scenes: list, concept: str) -> float:
    """Mean over images of the fraction of the prompt's attributes right, leaving out the concept's own."""
    from weightshop.nano.probe import labels, relevant

    per_image = []
    for p, scene in zip(predicted, scenes):
        truth = labels(scene)
        keys = [k for k in relevant(truth) if truth[k] != concept]
        per_image.append(np.mean([p[k] == truth[k] for k in keys]))
    return float(np.mean(per_image))


class ProbeScorer:
    """krea2-nano's probe: concept hit rate, and adherence on the other attributes when scenes are known."""

    name = "probe"

    def __init__(self, predictor: Callable[[list[Image.Image]], list[dict]], concept: str):
        from weightshop.nano import world

        if concept not in world.HELDOUT_CONCEPTS:
            raise WeightshopError(f"unknown concept {concept!r}: the probe judges {', '.join(world.HELDOUT_CONCEPTS)}")
        self.predictor = predictor
        self.concept = concept

    @classmethod
    def from_dir(cls, probe_dir: str | Path, concept: str) -> "ProbeScorer":
        from weightshop.nano.evaluate import load_probe
        from weightshop.nano.probe import predict

        probe = load_probe(probe_dir)
        return cls(lambda images: predict(probe, [_probe_size(im) for im in images]), concept)

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]:
        predicted = self.predictor(images)
        result = {CONCEPT: float(np.mean([concept_present(p, self.concept) for p in predicted]))}
        if jobs and all(job.scene is not None for job in jobs):
            from weightshop.nano.probe import score

            scenes = [job.scene for job in jobs]
            result[ADHERENCE] = other_attribute_accuracy(predicted, scenes, self.concept)
            result["all_correct"] = score(predicted, scenes)["all_correct"]
        return result


def _probe_size(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (64, 64) else image.resize((64, 64), Image.BILINEAR)


# --- generic: distance to the training images --------------------------------------------------------

STATS_SIDE = 64


def image_statistics(images: list[Image.Image]) -> np.ndarray:
    """(N, 80) position-free statistics of each image (center-cropped square, area-resized to 64 px):
    64 palette bins (RGB at 4 levels per channel: which colours, wherever they are), 8 bins of edge strength
    (luminance gradient magnitude: flat, soft or sharp), 8 bins of edge direction (weighted by strength).

    Cheap, deterministic and model-independent. Position-free on purpose: in raw pixels the average of a
    set (a grey blur) lies closer to every member than the members lie to each other, so a pixel distance
    rewards mush; these statistics put blur and noise far from a set of real images, and the edge
    directions of a star differ from a circle's.
    """
    rows = []
    for im in images:
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((STATS_SIDE, STATS_SIDE), Image.BOX)
        rgb = np.asarray(im).astype(np.int64) * 4 // 256
        bins = ((rgb[..., 0] * 4 + rgb[..., 1]) * 4 + rgb[..., 2]).ravel()
        palette = np.bincount(bins, minlength=64) / bins.size
        lum = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        gx, gy = np.zeros_like(lum), np.zeros_like(lum)
        gx[:, 1:-1], gy[1:-1, :] = (lum[:, 2:] - lum[:, :-2]) / 2, (lum[2:, :] - lum[:-2, :]) / 2
        magnitude = np.hypot(gx, gy)
        strength = np.histogram(np.clip(magnitude, 0, 0.5), bins=8, range=(0, 0.5))[0] / magnitude.size
        direction = np.histogram(np.mod(np.arctan2(gy, gx), np.pi), bins=8, range=(0, np.pi), weights=magnitude)[0]
        direction = direction / max(magnitude.sum(), 1e-12)
        rows.append(np.concatenate([palette, strength, direction]))
    return np.stack(rows)


def knn_distance(queries: np.ndarray, references: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Per query: the mean RMS distance to its k nearest references (itself left out when exclude_self)."""
    d = np.sqrt(((queries[:, None, :] - references[None, :, :]) ** 2).mean(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(1)


class TrainingSetDistance:
    """Generic judge for any model: how close the images come to the LoRA's training images.

    distance: per image, the mean RMS distance (image_statistics) to its k nearest training images,
    averaged over images. spread: the same figure among the training images themselves (each left out of
    its own neighbours): how far apart the set's own members are. concept = exp(-distance / spread): 1 at
    distance 0, 0.37 for images as close to the set as its members are to each other, towards 0 far away;
    Turbo's over Raw's is exp(-(Turbo's distance - Raw's) / spread). It has no notion of the prompt, so it
    reports no adherence.
    """

    name = "image-stats"

    def __init__(self, train_images: list[Image.Image], k: int = 5, source: str = ""):
        if len(train_images) < 2:
            raise WeightshopError(f"the generic judge needs at least 2 training images, found {len(train_images)}"
                                  + (f" in {source}" if source else ""))
        self.train = image_statistics(train_images)
        self.k = min(k, len(train_images) - 1)
        self.spread = max(float(knn_distance(self.train, self.train, self.k, exclude_self=True).mean()), 1e-9)
        self.source = source

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]:
        distance = float(knn_distance(image_statistics(images), self.train, self.k).mean())
        return {CONCEPT: float(np.exp(-distance / self.spread)), "distance": distance, "train_spread": self.spread}


MAX_TRAIN_IMAGES = 256


def load_training_images(source: str | Path, limit: int = MAX_TRAIN_IMAGES) -> list[Image.Image]:
    """Images of a folder (recursive, sorted) or of a dataset manifest's usable items (the first `limit`)."""
    from weightshop.data.images import ImageRejected, image_extensions, load_image

    source = Path(source)
    if (source.is_file() and source.suffix == ".json") or (source / "dataset.json").is_file():
        from weightshop.data.manifest import read_manifest, usable_items

        manifest = read_manifest(source)
        root = Path(manifest["source"])
        root = root.parent if root.is_file() else root
        files = [root / item["file"] for item in usable_items(manifest)]
    elif source.is_dir():
        exts = image_extensions()
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    else:
        raise WeightshopError(f"training images {source} not found: give a folder of images or a dataset.json")
    images = []
    for path in files[:limit]:
        try:
            images.append(load_image(path).image)
        except ImageRejected:
            continue  # curation already said why; an unreadable file is simply not a reference
    return images


def training_source_for_lora(lora: str | Path) -> Path | None:
    """The dataset manifest a `weightshop train` run used, found from the run's config.yaml beside the LoRA."""
    import yaml

    config = Path(lora).parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        manifest = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("manifest")
    except (yaml.YAMLError, AttributeError):
        return None
    return Path(manifest) if manifest and Path(manifest).exists() else None
