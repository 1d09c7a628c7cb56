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


# ---------------------------------------------------------------------------------------------------
# GGUF block formats (ggml's layouts). Q8_0 and Q4_0 are quantized by the gguf package (llama.cpp's own reference
# code); Q4_K is written here because gguf-py only dequantizes it.

QK_K = 256  # weights per K-quant super-block
Q4_K_BLOCK_BYTES = 144  # fp16 d, fp16 dmin, 12 bytes of packed 6-bit scales and mins, 128 bytes of 4-bit quants
_FP16_REL = 2.0 ** -11  # relative rounding of an fp16 scale (10 mantissa bits, round to nearest)
_FP16_TINY = 2.0 ** -24  # fp16's subnormal spacing: a scale below it rounds by up to this much (half, to nearest)


def _fp16_at_least(x: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 value >= x (x >= 0, fp32): the super-block scales must cover their sub-blocks' needs, or
    the largest weight of a sub-block would clip."""
    h = x.to(torch.float16)
    low = h.float() < x
    return torch.where(low, torch.nextafter(h, torch.tensor(float("inf"), dtype=torch.float16)), h)


def q4_k_quantize(w: torch.Tensor) -> torch.Tensor:
    """`w` (rows, n) with n a multiple of 256 as Q4_K blocks: uint8 (rows, n / 256 * 144), ggml's block_q4_K.

    Each super-block of 256 weights is 8 sub-blocks of 32, each dequantized as d * sc_j * q - dmin * m_j with q in
    0..15, sc_j and m_j 6-bit, d and dmin fp16. Choices (simpler than llama.cpp's iterative search, and with a
    guaranteed bound): the sub-block's offset m_j is rounded UP so that its smallest weight (or 0) maps to q >= 0,
    its step d * sc_j is rounded UP so that its largest maps to q <= 15, so nothing is ever clipped and every
    weight lands within half a step of its value (`q4_k_error_bound`)."""
    w = w.detach().float()
    rows, n = w.shape
    if n % QK_K:
        raise ValueError(f"Q4_K needs rows of a multiple of {QK_K} weights, got {n}")
    x = w.reshape(-1, 8, 32).double()  # (super-blocks, sub-blocks, weights)
    lo = x.amin(-1).clamp(max=0)  # the offset only ever shifts down: ggml stores -min as a positive m
    hi = x.amax(-1)
    dmin = _fp16_at_least((-lo).amax(-1).float() / 63)  # (super-blocks,)
    m = torch.where(dmin[:, None] > 0, torch.ceil(-lo / dmin[:, None].double()), torch.zeros_like(lo)).clamp(0, 63)
    offset = dmin[:, None].double() * m  # >= -lo: the smallest weight maps to >= 0
    need = ((hi + offset) / 15).clamp(min=0)  # the step that puts the largest weight on 15
    d = _fp16_at_least(need.amax(-1).float() / 63)
    sc = torch.where(d[:, None] > 0, torch.ceil(need / d[:, None].double()), torch.zeros_like(need)).clamp(0, 63)
    step = d[:, None].double() * sc
    q = torch.where(step[..., None] > 0, torch.round((x + offset[..., None]) / step[..., None].clamp(min=1e-300)),
                    torch.zeros_like(x)).clamp(0, 15).to(torch.uint8)
    sc, m = sc.to(torch.uint8), m.to(torch.uint8)
    # 12 scale bytes: bytes 0-3 hold sc0-3 (low 6 bits) and the top 2 bits of sc4-7; bytes 4-7 the same for the
    # mins; bytes 8-11 the low 4 bits of sc4-7 (low nibble) and of m4-7 (high nibble).
    scales = torch.cat([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), m[:, :4] | ((m[:, 4:] >> 4) << 6),
                        (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)], dim=1)
    # 128 quant bytes: byte i of 32-byte group g holds sub-block 2g's weight i (low nibble) and 2g+1's (high).
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)
    head = torch.stack([d, dmin], dim=1).to(torch.float16).view(torch.uint8)  # (super-blocks, 4)
    return torch.cat([head, scales, qs], dim=1).reshape(rows, n // QK_K * Q4_K_BLOCK_BYTES)


def q4_k_dequantize(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_K blocks uint8 (rows, k * 144) back to fp32 weights (rows, k * 256), by ggml's formula."""
    rows = blocks.shape[0]
    b = blocks.reshape(-1, Q4_K_BLOCK_BYTES)
    d, dmin = b[:, :4].contiguous().view(torch.float16).float().unbind(1)
    s = b[:, 4:16].to(torch.int32)
    sc = torch.cat([s[:, :4] & 63, (s[:, 8:] & 0x0F) | ((s[:, :4] >> 6) << 4)], dim=1)
    m = torch.cat([s[:, 4:8] & 63, (s[:, 8:] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    qs = b[:, 16:].reshape(-1, 4, 32).to(torch.int32)
    q = torch.stack([qs & 0x0F, qs >> 4], dim=2).reshape(-1, 8, 32).float()
    out = d[:, None, None] * sc[..., None] * q - dmin[:, None, None] * m[..., None]
    return out.reshape(rows, -1)


def q4_k_error_bound(w: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |w - q4_k_dequantize(q4_k_quantize(w))|, from w alone.

    With lo = min(sub-block, 0), hi = its max, M = the super-block's largest -lo: dmin <= M / 63 (1 + 2^-10)
    rounds the offset up by less than dmin, so the step needed is at most (hi - lo + dmin) / 15; d rounds it up by
    less than d <= (largest need) / 63 (1 + 2^-10); nothing clips, so the error is half a step. In fp16's subnormal
    range a scale rounds up by up to 2^-24 instead. A 2^-16 relative slack absorbs float arithmetic. (fp16 overflow
    of d, weights beyond ~1e6, is outside the bound.)"""
    w = w.detach().float()
    x = w.reshape(-1, 8, 32).double()
    lo = x.amin(-1).clamp(max=0)
    hi = x.amax(-1).clamp(min=lo)
    grow = 1 + 2.0 ** -10
    dmin = (-lo).amax(-1, keepdim=True) / 63 * grow + _FP16_TINY
    need = (hi - lo + dmin) / 15
    d = need.amax(-1, keepdim=True) / 63 * grow + _FP16_TINY
    half_step = (need + d) / 2 * (1 + 2.0 ** -16)
    return half_step[..., None].expand_as(x).reshape(w.shape).float()


def q8_0_error_bound(w: torch.Tensor) -> torch.Tensor:
    """Per-element bound for GGUF Q8_0 (blocks of 32 along a row, d = amax / 127 stored in fp16, q = round(w / d)):
    half a step, plus up to 127 steps times the fp16 rounding of d (relative, or 2^-25 in fp16's subnormal range)."""
    x = w.detach().float().reshape(-1, 32)
    d = x.abs().amax(-1, keepdim=True) / 127
    bound = d * (0.5 + 127 * _FP16_REL) + 127 * _FP16_TINY / 2
    return (bound * (1 + 2.0 ** -16)).expand_as(x).reshape(w.shape)


def q4_0_error_bound(w: torch.Tensor) -> torch.Tensor:
    """Per-element bound for GGUF Q4_0 (blocks of 32, d = (the weight of largest magnitude) / -8, q in -8..7):
    the end opposite that weight maps to +8, clipped to 7: up to one whole step, plus 8 steps of fp16 rounding."""
    x = w.detach().float().reshape(-1, 32)
    d = x.abs().amax(-1, keepdim=True) / 8
    bound = d * (1 + 8 * _FP16_REL) + 8 * _FP16_TINY / 2
    return (bound * (1 + 2.0 ** -16)).expand_as(x).reshape(w.shape)
