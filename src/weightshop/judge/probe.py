"""krea2-nano's probe as a judge: concept hit rate, and adherence to the prompt's other attributes when the
scenes are known. The probe itself (model, loader, label space) belongs to the shapes world in weightshop.nano."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.judge.base import ADHERENCE, CONCEPT, Job


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
        from weightshop.nano.probe import load_probe, predict

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


