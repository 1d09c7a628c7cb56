"""krea2-nano's probe as a judge: concept hit rate, and adherence to the prompt's other attributes when the
scenes are known. The probe itself (model, loader, label space) belongs to the shapes world in weightshop.nano."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.judge.base import ADHERENCE, CONCEPT, Job, JudgeIdentity, means


def concept_present(predicted: dict[str, str], concept: str) -> bool:
    """The probe sees the concept: a star as either shape, or the striped fill (as training validation does)."""
    return concept in (predicted["shape"], predicted["shape2"], predicted["fill"])


def attribute_agreement(predicted: dict, scene, concept: str) -> tuple[float, bool]:
    """(fraction of the prompt's attributes right leaving out the concept's own, every attribute right) for one
    image."""
    from weightshop.nano.probe import labels, relevant

    truth = labels(scene)
    keys = relevant(truth)
    others = [k for k in keys if truth[k] != concept]
    return float(np.mean([predicted[k] == truth[k] for k in others])), all(predicted[k] == truth[k] for k in keys)


def other_attribute_accuracy(predicted: list[dict], scenes: list, concept: str) -> float:
    """Mean over images of the fraction of the prompt's attributes right, leaving out the concept's own."""
    return float(np.mean([attribute_agreement(p, scene, concept)[0] for p, scene in zip(predicted, scenes)]))


class ProbeScorer:
    """krea2-nano's probe: concept hit rate, and adherence on the other attributes when scenes are known."""

    name = "probe"
    VERSION = "1"

    def __init__(self, predictor: Callable[[list[Image.Image]], list[dict]], concept: str, weights_sha256: str = ""):
        from weightshop.nano import world

        if concept not in world.HELDOUT_CONCEPTS:
            raise WeightshopError(f"unknown concept {concept!r}: the probe judges {', '.join(world.HELDOUT_CONCEPTS)}")
        self.predictor = predictor
        self.concept = concept
        self.identity = JudgeIdentity("krea2-nano probe", weights_sha256, self.VERSION)

    @classmethod
    def from_dir(cls, probe_dir: str | Path, concept: str) -> "ProbeScorer":
        from weightshop.nano.probe import load_probe, predict

        from weightshop.io import cached_sha256

        probe = load_probe(probe_dir)
        return cls(lambda images: predict(probe, [_probe_size(im) for im in images]), concept,
                   cached_sha256(Path(probe_dir) / "probe.safetensors"))

    def per_image(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, list[float]]:
        predicted = self.predictor(images)
        result = {CONCEPT: [float(concept_present(p, self.concept)) for p in predicted]}
        if jobs and all(job.scene is not None for job in jobs):
            pairs = [attribute_agreement(p, job.scene, self.concept) for p, job in zip(predicted, jobs)]
            result[ADHERENCE] = [a for a, _ in pairs]
            result["all_correct"] = [float(ok) for _, ok in pairs]
        return result

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]:
        return means(self.per_image(images, jobs))


def _probe_size(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (64, 64) else image.resize((64, 64), Image.BILINEAR)


