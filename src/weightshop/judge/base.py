"""The judge layer's interface: what every judge takes and returns.

A judge has a `name` and `score(images, jobs) -> {metric: value}`. Two metric names mean something to the
stages that sweep and gate: `concept` (how much of a LoRA's concept the images show, in [0, 1], higher is
more) and `adherence` (the fraction of the prompt's other attributes the images get right, in [0, 1]). Any
other metric is carried through as it is, so new judges need no change in the stages that call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

CONCEPT = "concept"
ADHERENCE = "adherence"


@dataclass(frozen=True)
class Job:
    """One image to judge: its prompt and seed, and the shapes-world scene it describes when known."""

    prompt: str
    seed: int
    scene: Any = None  # weightshop.nano.world.Scene: ground truth for prompt adherence


class Judge(Protocol):
    name: str

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]: ...
