"""The arithmetic of each weight format, as pure functions on tensors: quantize, dequantize, the error bound.

Every format weightshop reads or writes is here once; the Linear types (`layers`), the file layouts (`comfy`,
`gguf`), training's frozen base and the drift report all call these. Scales are absmax scales: the largest
magnitude of a tensor (per-tensor), of a row (per output channel) or of a block lands on the format's largest
value, so no weight is clipped and small weights keep as many levels as the format has.
"""

from __future__ import annotations

import torch

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
INT8_MAX = 127  # symmetric: -128 is never used, so q and -q are both representable
TINY = torch.finfo(torch.float32).tiny  # an all-zero row or tensor gets this scale, not a division by zero


def absmax_scale(w: torch.Tensor, top: float, per_channel: bool) -> torch.Tensor:
    """fp32 scale(s) mapping `w`'s absmax onto `top`: one scalar, or one per row as an (out, 1) column."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().amax()
    return (amax / top).clamp_min(TINY)


def fp8_quantize(w: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`w` as float8_e4m3fn values q and fp32 scale s with w ~= q * s (s scalar, or (out, 1) per channel)."""
    scale = absmax_scale(w, FP8_MAX, per_channel)
    return (w.detach().float() / scale).to(torch.float8_e4m3fn), scale


def fp8_dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D tensor as float8_e4m3fn rows times one fp32 scale per row (amax / 448): x ~= q * scale."""
    return fp8_quantize(x, per_channel=True)


def int8_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`w` as symmetric int8 per output channel: q in [-127, 127], fp32 scale (out, 1), w ~= q * scale."""
    scale = absmax_scale(w, INT8_MAX, per_channel=True)
    q = torch.round(w.detach().float() / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def int8_dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype)


def relative_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """||reference - approx|| / ||reference|| (Frobenius), in fp32; 0 for an exact copy."""
    ref = reference.detach().float()
    diff = (ref - approx.detach().float()).norm()
    norm = ref.norm()
    return float(diff / norm) if norm > 0 else float(diff)


def fp8_error_bound(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |w - dequantize(fp8_quantize(w))|.

    e4m3 keeps 3 mantissa bits: a value in float8's normal range rounds within 2^-4 of itself (half a step of
    2^-3); below 2^-6 (subnormals) the step is fixed at 2^-9, so the absolute error is at most 2^-10. In units
    of the scale, the bound is max(|w| / s * 2^-4, 2^-10) * s."""
    w = w.detach().float()
    return torch.maximum(w.abs() * 2.0 ** -4, scale.float() * 2.0 ** -10)


def int8_error_bound(scale: torch.Tensor) -> torch.Tensor:
    """Rounding to the nearest integer step: at most half a step, scale / 2, per element (per row)."""
    return scale.float() / 2
