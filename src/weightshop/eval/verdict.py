"""The production verdict for a LoRA: Turbo + LoRA good enough for this domain, or Raw + LoRA the honest choice?

Decided from the same numbers as everything else, on the suite's subject prompts: the concept the LoRA brings on
each checkpoint (over the checkpoint alone), the adherence to the rest of the prompt, and the artefacts the
overfitting checks found. Turbo is good enough when its concept and adherence stay within the tolerance (the
noise floor, or DEFAULT_TOLERANCE) of Raw's and no check flags it; each option is priced from its measured seconds
per image and a $/GPU-hour.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

DEFAULT_TOLERANCE = 0.05  # in the metric's units (hit rates: 5 points), when no noise floor was measured
DEFAULT_DOLLARS_PER_HOUR = 2.50  # one H100 on demand, order of magnitude (set yours with --dollars-per-hour)
# Checks that stop a release whichever checkpoint serves it: a LoRA that copies its training images or stamps a mark.
BLOCKING = ("memorising", "learned text or watermark", "learned watermark")


@dataclass
class Option:
    checkpoint: str
    strength: float
    concept: float | None
    concept_lift: float | None  # over the same checkpoint without the LoRA
    adherence: float | None
    seconds_per_image: float | None
    dollars_per_image: float | None


@dataclass
class Verdict:
    choice: str  # "turbo", "raw", or "neither" (the LoRA brings no concept, or a blocking check flags it everywhere)
    strength: float
    reasons: list[str]
    options: list[Option]
    flags: list[str] = field(default_factory=list)

    def headline(self) -> str:
        what = {"turbo": "Turbo + LoRA is good enough for production", "raw": "Raw + LoRA is the honest choice",
                "neither": "neither: " + (self.reasons[-1] if self.reasons else "")}[self.choice]
        return f"{what} (strength {self.strength:g})"

    def as_dict(self) -> dict:
        return {"choice": self.choice, "headline": self.headline(), "strength": self.strength, "reasons": self.reasons,
                "options": [asdict(o) for o in self.options], "flags": self.flags}


def _mean(run, metric: str | None, tag: str = "subject") -> float | None:
    if not metric:
        return None
    values = list(run.values(metric, tag).values())
    return sum(values) / len(values) if values else None


def option(lora_run, base_run, checkpoint: str, strength: float, concept: str | None, adherence: str | None,
           dollars_per_hour: float) -> Option:
    c, b = _mean(lora_run, concept), _mean(base_run, concept)
    seconds = lora_run.seconds_per_image
    return Option(checkpoint, strength, c, None if c is None or b is None else c - b, _mean(lora_run, adherence),
                  seconds, None if seconds is None else seconds * dollars_per_hour / 3600)


def _kind(flag: str) -> str:
    """A flag's check, the words before its colon ("concept bleed", "memorising", ...)."""
    return flag.split(":", 1)[0].strip()


def decide(raw: Option, turbo: Option, flags: dict[str, list[str]], tolerances: dict[str, float]) -> Verdict:
    """`flags`: the overfitting checks' flags per checkpoint; `tolerances`: "concept" and "adherence" slack."""
    tol_c = tolerances.get("concept", DEFAULT_TOLERANCE)
    tol_a = tolerances.get("adherence", DEFAULT_TOLERANCE)
    reasons: list[str] = []
    every_flag = [f"{name}: {f}" for name, found in flags.items() for f in found]
    if raw.concept_lift is not None and raw.concept_lift <= tol_c and (turbo.concept_lift or 0) <= tol_c:
        reasons.append(f"the LoRA does not bring its concept: it lifts it by {100 * raw.concept_lift:.1f} points on "
                       f"Raw and {100 * (turbo.concept_lift or 0):.1f} on Turbo, not beyond the tolerance "
                       f"({100 * tol_c:.1f})")
        return Verdict("neither", raw.strength, reasons, [raw, turbo], every_flag)
    raw_kinds = {_kind(f) for f in flags.get("raw", [])}
    turbo_kinds = {_kind(f) for f in flags.get("turbo", [])}
    blocked = sorted(k for k in raw_kinds & turbo_kinds if k in BLOCKING)
    if blocked:
        reasons.append(f"fix the LoRA first: it is flagged for {', '.join(blocked)} on both checkpoints")
        return Verdict("neither", raw.strength, reasons, [raw, turbo], every_flag)
    turbo_ok = True
    for what, tolerance in (("concept", tol_c), ("adherence", tol_a)):  # Turbo may trail Raw by the tolerance
        t, r = getattr(turbo, what), getattr(raw, what)
        if t is None or r is None:
            continue
        ok = r - t <= tolerance
        turbo_ok &= ok
        reasons.append(f"{what}: Turbo {100 * t:.1f} % vs Raw {100 * r:.1f} % "
                       f"({'within' if ok else 'beyond'} the {100 * tolerance:.1f}-point tolerance)")
    turbo_only = [f for f in flags.get("turbo", []) if _kind(f) not in raw_kinds]
    if turbo_only:  # a problem Raw + LoRA does not have
        turbo_ok = False
        reasons.append(f"Turbo + LoRA is flagged where Raw + LoRA is not: {'; '.join(turbo_only)}")
    shared = sorted(raw_kinds & turbo_kinds)
    if shared:
        reasons.append(f"both checkpoints are flagged for {', '.join(shared)}: a problem of the LoRA itself, not of "
                       "the checkpoint (see the flags)")
    if turbo.seconds_per_image and raw.seconds_per_image:
        reasons.append(f"speed: Turbo {turbo.seconds_per_image:.2f} s/image vs Raw {raw.seconds_per_image:.2f} "
                       f"({raw.seconds_per_image / turbo.seconds_per_image:.1f}x)")
    chosen = turbo if turbo_ok else raw
    return Verdict("turbo" if turbo_ok else "raw", chosen.strength, reasons, [raw, turbo], every_flag)
