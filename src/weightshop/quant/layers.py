"""Linear layers whose weight is stored quantized: one implementation per format, for training's frozen base and for
inference on quantized files alike.

- `Float8Linear`: float8_e4m3fn weight times one fp32 scale (per tensor, the "fp8 scaled" and comfy_quant
  float8 layout; or per output channel), upcast inside its own forward.
- `Float8MatmulLinear`: float8 weight with one scale per output channel whose matmuls run in float8
  (`torch._scaled_mm`, Ada/Hopper), forward and input gradient.
- `Int8Linear`: int8 weight-only, one fp32 scale per output channel (comfy_quant's int8_tensorwise per_row),
  upcast inside its forward.
- `Int8MatmulLinear`: the same weight whose matmuls run in int8 (`torch._int_mm`: GeForce-class cards' int8
  tensor cores, and the CPU), activations quantized per token as they arrive; inference only.
- nf4: bitsandbytes' `Linear4bit` (QLoRA; CUDA only), converted by `to_nf4`.
- GGUF blocks (Q8_0, Q4_0, K-quants): diffusers' `GGUFLinear`, built by `weightshop.models.quantized` from
  `quant.gguf_file`.

Every type is a `torch.nn.Linear` subclass, so peft wraps it with a LoRA like any Linear and the LoRA's output is
added to the quantized base's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from weightshop.errors import WeightshopError
from weightshop.quant.numerics import FP8_MAX, INT8_MAX, TINY, fp8_quantize, int8_quantize, quantize_rows

__all__ = ["FP8_MAX", "Float8Linear", "Float8MatmulLinear", "Int8Linear", "Int8MatmulLinear", "int8_mm_refusal",
           "int8_rows", "convert_linears", "quantize_rows",
           "to_nf4", "weight_bytes", "LINEAR_TYPES"]


def _freeze(linear: torch.nn.Linear) -> None:
    if linear.bias is not None:
        linear.bias.requires_grad_(False)


class _ScaledLinear(torch.nn.Linear):
    """A frozen Linear holding a low-precision weight (`stored_dtype`) and its fp32 scale (a scalar, or one per
    output channel as an (out, 1) column), upcast to `compute_dtype` inside its own forward."""

    compute_dtype: torch.dtype = torch.bfloat16
    stored_dtype: torch.dtype

    @classmethod
    def adopt(cls, linear: torch.nn.Linear, q: torch.Tensor, scale: torch.Tensor, compute_dtype: torch.dtype):
        """Turn `linear` into this type holding already-quantized `q` and `scale` (a file's, or `convert`'s)."""
        if q.dtype != cls.stored_dtype:
            raise WeightshopError(f"{cls.__name__} needs {str(cls.stored_dtype).removeprefix('torch.')} weights, "
                                  f"got {q.dtype}")
        linear.weight = torch.nn.Parameter(q, requires_grad=False)
        linear.register_buffer("weight_scale", scale.float().reshape(-1, 1) if scale.numel() > 1
                               else scale.float().reshape(()))
        _freeze(linear)
        linear.__class__ = cls
        linear.compute_dtype = compute_dtype
        return linear

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.to(self.compute_dtype) * self.weight_scale.to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return torch.nn.functional.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias)


class Float8Linear(_ScaledLinear):
    """A frozen Linear whose weight is stored as float8_e4m3fn times an fp32 scale, upcast in its forward.

    Written here rather than using diffusers' layerwise casting because those hooks cast the module's weight in
    place before and after each forward: under gradient checkpointing with torch.compile the recomputed forward
    then sees float8 where the first pass had saved bf16 and autograd raises CheckpointError (measured on the
    H200, reproduced on CPU at nano size). Here the upcast is part of the forward's own graph, so recomputation
    repeats it exactly and compile fuses it into the matmul's prologue. The absmax scale keeps small weights out
    of float8's subnormal range, which an unscaled cast (layerwise casting's) loses precision to.
    """

    stored_dtype = torch.float8_e4m3fn

    per_channel = False  # default scale granularity of `convert`; `Float8MatmulLinear` keeps one per channel

    @classmethod
    def convert(cls, linear: torch.nn.Linear, compute_dtype: torch.dtype,
                per_channel: bool | None = None) -> "Float8Linear":
        q, scale = fp8_quantize(linear.weight, cls.per_channel if per_channel is None else per_channel)
        return cls.adopt(linear, q, scale.to(linear.weight.device), compute_dtype)


class _Float8Matmul(torch.autograd.Function):
    """y = x W^T + b multiplied in float8, and the input's gradient too (the frozen weight gets none).

    Forward: x quantized per row, W per output channel: both scales are outer scales of the product. Backward:
    grad_x = grad W, whose contraction runs over W's output channels, so W's scales are folded into the gradient
    first (grad * s_w per column), which is then quantized per row; W's float8 values are used as stored."""

    @staticmethod
    def forward(ctx, x, weight, weight_scale, bias, compute_dtype):
        rows = x.reshape(-1, x.shape[-1])
        q, scale = quantize_rows(rows)
        # row-wise scaled float8 matmuls return bf16 on CUDA
        out = torch._scaled_mm(q, weight.t(), scale_a=scale, scale_b=weight_scale.reshape(1, -1),
                               out_dtype=torch.bfloat16).to(compute_dtype)
        if bias is not None:
            out = out + bias.to(compute_dtype)
        ctx.save_for_backward(weight, weight_scale)
        ctx.compute_dtype, ctx.x_dtype = compute_dtype, x.dtype
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        weight, weight_scale = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1]).float() * weight_scale.reshape(1, -1)
        q, scale = quantize_rows(rows)
        ones = torch.ones(1, weight.shape[1], device=weight.device, dtype=torch.float32)
        # the second operand must be column-major: a transposed float8 copy of W (1 byte per weight, transient)
        grad_x = torch._scaled_mm(q, weight.t().contiguous().t(), scale_a=scale, scale_b=ones,
                                  out_dtype=torch.bfloat16)
        return grad_x.to(ctx.x_dtype).reshape(*grad.shape[:-1], weight.shape[1]), None, None, None, None


class Float8MatmulLinear(Float8Linear):
    """A frozen Linear stored like `Float8Linear` with one scale per output channel, whose forward and input
    gradient multiply in float8 (`torch._scaled_mm`, row-wise scales) instead of upcasting the weight.

    Written here because torchao's float8 training keeps the weight in bf16 and re-quantizes it every step (the
    base would not fit 24 GB) and its float8 inference tensors are not meant for a backward pass. Shapes that
    float8 tensor cores refuse (in or out features not a multiple of 16) and a per-tensor scale fall back to the
    upcast forward."""

    per_channel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_features % 16 or self.out_features % 16 or self.weight_scale.numel() == 1:
            return super().forward(x)
        return _Float8Matmul.apply(x, self.weight, self.weight_scale, self.bias, self.compute_dtype)


class Int8Linear(_ScaledLinear):
    """A frozen Linear stored as symmetric int8 with one fp32 scale per output channel, upcast in its forward.

    Written here (training once used torchao's int8 weight-only tensors) so that the layout of a file (comfy_quant
    int8_tensorwise with per-row scales) and the module are the same two tensors: a file loads by assignment and
    saves back bit for bit, and peft wraps it like any Linear."""

    stored_dtype = torch.int8

    @classmethod
    def convert(cls, linear: torch.nn.Linear, compute_dtype: torch.dtype) -> "Int8Linear":
        q, scale = int8_quantize(linear.weight)
        return cls.adopt(linear, q, scale.to(linear.weight.device), compute_dtype)


def int8_mm_refusal(rows: int, in_features: int, out_features: int, device_type: str) -> str | None:
    """Why `torch._int_mm` cannot multiply (rows, in) by (in, out) here, or None when it can. CUDA's int8 GEMM
    (cuBLASLt) wants more than 16 rows and both inner and outer sizes multiples of 8; the CPU kernel takes any
    shape; other devices have none."""
    if device_type == "cpu":
        return None
    if device_type != "cuda":
        return f"torch._int_mm has no {device_type} kernel"
    if rows <= 16:
        return f"{rows} rows: CUDA's int8 matmul needs more than 16"
    if in_features % 8 or out_features % 8:
        return f"{in_features} x {out_features}: CUDA's int8 matmul needs multiples of 8"
    return None


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D activation as symmetric int8 per row (per token) and one fp32 scale per row: x ~= q * scale."""
    scale = (x.detach().float().abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp_min(TINY)
    return torch.round(x.float() / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


class Int8MatmulLinear(Int8Linear):
    """A frozen Linear stored like `Int8Linear` whose forward multiplies in int8: each token's activations are
    quantized on the fly (symmetric, one scale per row), `torch._int_mm` accumulates in int32 against the int8
    weight, and the product is rescaled by the token's scale times the channel's (both are outer scales, so the
    rescale is exact; the error is the two roundings: per element at most s_x/2 and s_w/2).

    Written for GeForce-class cards (Ampere, Ada consumer parts), whose int8 tensor cores run at twice their bf16
    rate and which lack float8 (Ampere) or whose float8 rate is capped; `Float8MatmulLinear` is the Hopper path.
    Inference only (no backward). Where `int8_mm_refusal` gives a reason (too few rows on CUDA, odd sizes, another
    device), the forward falls back to the weight-only upcast of `Int8Linear`, which computes the same product
    without the activation rounding; `fallback_reason(x)` says why for a given input."""

    def fallback_reason(self, x: torch.Tensor) -> str | None:
        rows = x.numel() // max(x.shape[-1], 1)
        return int8_mm_refusal(rows, self.in_features, self.out_features, x.device.type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fallback_reason(x) is not None:
            return super().forward(x)
        q, scale = int8_rows(x.reshape(-1, x.shape[-1]))
        acc = torch._int_mm(q, self.weight.t())  # the transposed view is column-major, as cuBLASLt's int8 wants
        out = (acc.float() * scale * self.weight_scale.reshape(1, -1)).to(self.compute_dtype)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


# In-memory conversions by format name (training's base_dtype names); files add the GGUF types.
LINEAR_TYPES: dict[str, Callable[[torch.nn.Linear, torch.dtype], torch.nn.Linear]] = {
    "fp8": lambda m, dt: Float8Linear.convert(m, dt),
    "fp8-channel": lambda m, dt: Float8Linear.convert(m, dt, per_channel=True),
    "fp8-mm": lambda m, dt: Float8MatmulLinear.convert(m, dt),
    "int8": lambda m, dt: Int8Linear.convert(m, dt),
    "int8-mm": lambda m, dt: Int8MatmulLinear.convert(m, dt),
}


def convert_linears(module: torch.nn.Module, fmt: str, compute_dtype: torch.dtype,
                    select: Callable[[str], bool], prefix: str = "") -> list[str]:
    """Convert in place every `torch.nn.Linear` under `module` whose full name (`prefix` + its name) `select`
    accepts to format `fmt` (a key of LINEAR_TYPES); LoRA layers are never touched. Returns the names converted."""
    if fmt not in LINEAR_TYPES:
        raise WeightshopError(f"format {fmt!r}: expected one of {', '.join(LINEAR_TYPES)}")
    done = []
    for name, child in list(module.named_modules()):
        full = prefix + name
        if type(child) is torch.nn.Linear and "lora_" not in full and select(full):
            LINEAR_TYPES[fmt](child, compute_dtype)
            done.append(full)
    return done


def to_nf4(module: torch.nn.Module, compute_dtype: torch.dtype, select: Callable[[str], bool]) -> list[str]:
    """bitsandbytes 4-bit NormalFloat (QLoRA) for the selected Linears; quantizes on its way to the GPU."""
    if not torch.cuda.is_available():
        raise WeightshopError("nf4 needs bitsandbytes on a CUDA GPU; on CPU use fp8 or int8")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise WeightshopError("nf4 needs bitsandbytes: pip install bitsandbytes") from None
    done = []
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not (type(child) is torch.nn.Linear and select(full)):
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, child_name, q.to("cuda"))
            done.append(full)
    return done


def weight_bytes(module) -> int:
    """Bytes the module's parameters and buffers occupy as stored (quantized tensors at their real size)."""
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if hasattr(t, "__tensor_flatten__"):  # a tensor subclass (torchao): sum its real components
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total
