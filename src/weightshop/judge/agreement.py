"""Two judges on the same images: how often they agree that the concept is there, and whether their figures part.

A figure judged by one judge can carry that judge's blind spots; a second judge that shares nothing with the first
(on krea2-nano: the probe, trained on the renderer, and the geometry judge, which learns nothing) makes them
visible. `agreement` compares two judges' per-image concept values on the same images; `ratios_part` does the same
for a ratio of two of their figures (the transfer ratio).

The margin: 10 points. Two judges' rates on the same n images differ by sampling alone with a standard error of
about sqrt(d / n), d the fraction of images they disagree on; at the demo's 96 images and d = 0.2 that is 4.6
points, so a 10-point gap is about two standard errors: beyond it the judges measure different things rather than
the same thing noisily. For ratios the same 10 points are read as 0.10 of ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from weightshop.errors import WeightshopError
from weightshop.judge.base import CONCEPT

MARGIN_POINTS = 10.0
SEEN = 0.5  # a per-image concept value at or above this counts as "the judge sees the concept"


def _concept_values(per_image) -> np.ndarray:
    if isinstance(per_image, dict):
        if CONCEPT not in per_image:
            raise WeightshopError(f"both judges must report a per-image {CONCEPT!r}")
        per_image = per_image[CONCEPT]
    return np.asarray(list(per_image), dtype=np.float64)


def agreement(per_image_a: dict[str, list[float]] | Sequence[float],
              per_image_b: dict[str, list[float]] | Sequence[float], margin_points: float = MARGIN_POINTS) -> dict:
    """Two judges' `concept` per image on the same images, in the same order: each a judge's per_image output (its
    `concept` list is read) or the list of values itself.

    Returns n, `agreement` (the fraction of images both see the concept in or both do not; a value >= 0.5 is seen),
    `both`, `only_a`, `only_b`, `neither` (fractions), `rate_a`, `rate_b` (each judge's mean concept value: its hit
    rate), `difference` (rate_a - rate_b), `margin_points` and `flag` (True when the rates part by more than the
    margin)."""
    if margin_points < 0:
        raise WeightshopError(f"the agreement margin must be >= 0 points, got {margin_points}")
    a, b = _concept_values(per_image_a), _concept_values(per_image_b)
    if len(a) != len(b):
        raise WeightshopError(f"the two judges scored different numbers of images ({len(a)} and {len(b)})")
    if not len(a):
        raise WeightshopError("no images to compare the two judges on")
    seen_a, seen_b = a >= SEEN, b >= SEEN
    rate_a, rate_b = float(a.mean()), float(b.mean())
    return {"n": int(len(a)), "agreement": float(np.mean(seen_a == seen_b)),
            "both": float(np.mean(seen_a & seen_b)), "only_a": float(np.mean(seen_a & ~seen_b)),
            "only_b": float(np.mean(~seen_a & seen_b)), "neither": float(np.mean(~seen_a & ~seen_b)),
            "rate_a": rate_a, "rate_b": rate_b, "difference": rate_a - rate_b, "margin_points": float(margin_points),
            "flag": bool(abs(rate_a - rate_b) * 100 > margin_points + 1e-9)}


def ratios_part(ratio_a: float | None, ratio_b: float | None, margin_points: float = MARGIN_POINTS) -> dict:
    """Two judges' values of one ratio (e.g. the transfer ratio): their difference and whether it passes the margin
    (read as hundredths of ratio). A ratio one judge cannot form (None) while the other can is flagged too."""
    if ratio_a is None or ratio_b is None:
        return {"difference": None, "margin_points": float(margin_points),
                "flag": (ratio_a is None) != (ratio_b is None)}
    return {"difference": float(ratio_a - ratio_b), "margin_points": float(margin_points),
            "flag": bool(abs(ratio_a - ratio_b) * 100 > margin_points + 1e-9)}
