"""The compute side of a plan: FLOPs from `models.flops` (the one FLOP model, which `weightshop bench train` and
`weightshop bench generate` count with too) and the least time that work can take on a card.

The bound is FLOPs over the card's dense peak (`models.flops.peak_tflops`): no run is faster, real ones reach a
fraction of it (the MFU the benchmarks report). It is given only when --gpu names a card whose peak is known;
a bare memory size (24GB) names no card, so it gets no bound rather than a guessed one.
"""

from __future__ import annotations

from weightshop.models.flops import TERA, peak_tflops
from weightshop.models.memory import GPUS_MIB

__all__ = ["card_name", "card_peaks", "lower_bound_s"]


def card_name(gpu: str | None) -> str | None:
    """The card a --gpu value names (`parse_gpu`'s card names: H100, 4090, a100-40gb, ...), None for a size."""
    if gpu is None:
        return None
    key = str(gpu).strip().lower().replace(" ", "").replace("_", "-")  # as `models.memory.parse_gpu` reads it
    return key if key in GPUS_MIB else None


def card_peaks(gpu: str | None, fp8: bool = False) -> dict[str, float] | None:
    """Dense peak TFLOP/s of the card --gpu names, by precision: bf16, and fp8 too when `fp8` (the matmuls run in
    float8); None when --gpu names no card or its peak is not known."""
    name = card_name(gpu)
    bf16 = None if name is None else peak_tflops(name)
    if bf16 is None:
        return None
    return {"bf16": bf16, "fp8": peak_tflops(name, fp8=True)} if fp8 else {"bf16": bf16}


def lower_bound_s(flops: float, peaks: dict[str, float] | None) -> dict[str, float] | None:
    """Seconds `flops` take at least at each peak (FLOPs / (TFLOP/s x 1e12)): a FLOP-limited lower bound."""
    return None if peaks is None else {k: flops / (v * TERA) for k, v in peaks.items()}
