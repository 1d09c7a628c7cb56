"""The judge layer's interface: what every judge takes and returns.

A judge has a `name`, an `identity` (backend, weights' sha256, version: two numbers are compared only when they
came from the same judge), `per_image(images, jobs) -> {metric: [value per image]}` (what paired statistics need)
and `score(images, jobs) -> {metric: value}` (the means, plus any set-level figure). Two metric names mean
something to the stages that sweep and gate: `concept` (how much of a LoRA's concept the images show, in [0, 1],
higher is more) and `adherence` (the fraction of the prompt's other attributes the images get right, in [0, 1]).
Any other metric is carried through as it is, so new judges need no change in the stages that call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

CONCEPT = "concept"
ADHERENCE = "adherence"


@dataclass(frozen=True)
class Job:
    """One image to judge: its prompt and seed, and the shapes-world scene it describes when known."""

    prompt: str
    seed: int
    scene: Any = None  # weightshop.nano.world.Scene: ground truth for prompt adherence


@dataclass(frozen=True)
class JudgeIdentity:
    """Which judge made a number: its backend, the sha256 of its weights ("" when it has none) and its version."""

    backend: str
    weights_sha256: str = ""
    version: str = "1"

    def as_dict(self) -> dict:
        return {"backend": self.backend, "weights_sha256": self.weights_sha256, "version": self.version}


def comparable(a: dict, b: dict) -> bool:
    """Whether two recorded identities (`JudgeIdentity.as_dict()`) are the same judge, so their numbers compare."""
    return all(a.get(k) == b.get(k) for k in ("backend", "weights_sha256", "version"))


class Judge(Protocol):
    name: str
    identity: JudgeIdentity

    def per_image(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, list[float]]: ...

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]: ...


def means(per_image: dict[str, list[float]]) -> dict[str, float]:
    """The set's figure of each per-image metric: its mean."""
    return {k: float(np.mean(v)) for k, v in per_image.items() if len(v)}
