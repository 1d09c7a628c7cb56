"""The arithmetic of a strength sweep: parsing it, transfer ratios, and the recommended Turbo strength.

Pure functions of numbers, so the report's headline figures can be checked with hand-made examples.
Scores are fractions in [0, 1]; the adherence tolerance is given in points (hundredths), as people say
"adherence dropped 5 points".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from weightshop.errors import WeightshopError

DEFAULT_STRENGTHS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
DEFAULT_TOLERANCE_POINTS = 5.0
_TIE = 1e-9  # scores closer than this are equal (hit rates are k/n: exact ties are common)


def parse_strengths(text: str) -> tuple[float, ...]:
    """'0.5,1,1.5' -> (0.5, 1.0, 1.5): sorted, duplicates dropped; each a finite number >= 0."""
    parts = [p.strip() for p in str(text).split(",")]
    if not str(text).strip() or any(not p for p in parts):
        raise WeightshopError(f"bad --strengths {text!r}: expected comma-separated numbers, e.g. 0.5,0.75,1,1.25")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise WeightshopError(f"bad --strengths {text!r}: {part!r} is not a number "
                                  "(expected comma-separated numbers, e.g. 0.5,0.75,1,1.25)") from None
        if not math.isfinite(value) or value < 0:
            raise WeightshopError(f"bad --strengths {text!r}: {part!r} must be a finite number >= 0")
        values.append(value)
    return tuple(sorted(set(values)))


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1' -> (0, 1): integers >= 0 in the order given, duplicates dropped."""
    parts = [p.strip() for p in str(text).split(",")]
    if not str(text).strip() or any(not p for p in parts):
        raise WeightshopError(f"bad --seeds {text!r}: expected comma-separated integers, e.g. 0,1")
    seeds = []
    for part in parts:
        if not part.isdigit():
            raise WeightshopError(f"bad --seeds {text!r}: {part!r} is not an integer >= 0")
        seeds.append(int(part))
    return tuple(dict.fromkeys(seeds))


def transfer_ratio(turbo_score: float | None, raw_score: float | None) -> float | None:
    """Turbo's concept score over Raw's (the LoRA on both). None when Raw shows none of the concept:
    the LoRA learnt nothing measurable on Raw, so there is nothing to transfer and no ratio."""
    if turbo_score is None or raw_score is None or raw_score <= 0:
        return None
    return turbo_score / raw_score


@dataclass(frozen=True)
class SweepPoint:
    """Turbo + LoRA at one strength: its concept score and, when a judge can tell, its prompt adherence."""

    strength: float
    concept: float
    adherence: float | None = None


@dataclass(frozen=True)
class Recommendation:
    strength: float
    concept: float
    adherence: float | None
    within_tolerance: bool
    reason: str

    def as_dict(self) -> dict:
        return {"strength": self.strength, "concept": self.concept, "adherence": self.adherence,
                "within_tolerance": self.within_tolerance, "reason": self.reason}


def _lowest_of_best(points: list[SweepPoint], key) -> SweepPoint:
    best = max(key(p) for p in points)
    return min((p for p in points if key(p) >= best - _TIE), key=lambda p: p.strength)


def recommend_strength(points: list[SweepPoint], baseline_adherence: float | None,
                       tolerance_points: float = DEFAULT_TOLERANCE_POINTS) -> Recommendation:
    """The strength with the best concept score whose prompt adherence is at most `tolerance_points` below
    Turbo alone's (`baseline_adherence`); ties go to the lowest strength.

    Without an adherence measure (baseline None) every strength is eligible. When no strength stays within
    the tolerance, the one that keeps the most adherence is returned, flagged `within_tolerance=False`.
    """
    if not points:
        raise WeightshopError("the strength sweep is empty: give at least one strength")
    if tolerance_points < 0:
        raise WeightshopError(f"the adherence tolerance must be >= 0 points, got {tolerance_points}")
    if baseline_adherence is None or any(p.adherence is None for p in points):
        best = _lowest_of_best(points, lambda p: p.concept)
        return Recommendation(best.strength, best.concept, best.adherence, True,
                              f"best concept score ({best.concept:.3f}); no prompt-adherence judge, so every "
                              "strength was eligible; ties go to the lowest strength")
    floor = baseline_adherence - tolerance_points / 100.0
    eligible = [p for p in points if p.adherence >= floor - _TIE]
    if eligible:
        best = _lowest_of_best(eligible, lambda p: p.concept)
        return Recommendation(best.strength, best.concept, best.adherence, True,
                              f"best concept score ({best.concept:.3f}) among strengths whose prompt adherence "
                              f"stays within {tolerance_points:g} points of Turbo alone ({baseline_adherence:.3f}); "
                              "ties go to the lowest strength")
    best = _lowest_of_best(points, lambda p: p.adherence)
    return Recommendation(best.strength, best.concept, best.adherence, False,
                          f"no strength keeps prompt adherence within {tolerance_points:g} points of Turbo alone "
                          f"({baseline_adherence:.3f}); this one keeps the most ({best.adherence:.3f})")
