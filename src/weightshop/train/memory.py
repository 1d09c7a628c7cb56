"""How the frozen base is stored while a LoRA trains on it, and regional compilation.

The base never gets gradients, so it can live in fewer bits than it computes in; only the 28 (on nano: 6)
transformer blocks are stored low, while the embedders, text fusion, time path and final layer stay in the
compute dtype, which is the usual practice for Krea 2 quantized files too (see KREA2.md).

- fp8:  each block Linear stored as float8_e4m3fn with one fp32 scale (the "fp8 scaled" layout of ComfyUI's
        Krea 2 files), upcast inside its own forward (`Float8Linear`).
- fp8-mm: stored in float8 with one scale per output channel, and the matmuls themselves run in float8
        (`torch._scaled_mm`; activations and gradients scaled per row as they arrive: `Float8MatmulLinear`).
        Float8 tensor cores (Ada, Hopper) do the forward, its recomputation under checkpointing and the input
        gradient at twice bf16's rate.
- int8: torchao's int8 weight-only tensors (per-channel scales); peft wraps them in its torchao LoRA layer.
- nf4:  bitsandbytes 4-bit NormalFloat (QLoRA), CUDA only.

The LoRA itself is always added after this step and kept in fp32.
"""

from __future__ import annotations

import torch

from weightshop.errors import WeightshopError
from weightshop.train.config import BASE_DTYPES


def _in_blocks(name: str) -> bool:
    return name.startswith("transformer_blocks.") and "norm" not in name


FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448


class Float8Linear(torch.nn.Linear):
    """A frozen Linear whose weight is stored as float8_e4m3fn times one fp32 scale, upcast in its forward.

    Written here rather than using diffusers' layerwise casting (weightshop's first fp8 path) because those
    hooks cast the module's weight in place before and after each forward: under gradient checkpointing with
    torch.compile the recomputed forward then sees float8 where the first pass had saved bf16 and autograd
    raises CheckpointError (measured on the H200, reproduced on CPU at nano size). Here the upcast is part of
    the forward's own graph, so recomputation repeats it exactly and compile fuses it into the matmul's
    prologue. The per-tensor scale (amax / 448) keeps small weights out of float8's subnormal range, which an
    unscaled cast (layerwise casting's) loses precision to.
    """

    compute_dtype: torch.dtype = torch.bfloat16

    per_channel = False  # one scale for the tensor; `Float8MatmulLinear` keeps one per output channel

    @classmethod
    def convert(cls, linear: torch.nn.Linear, compute_dtype: torch.dtype) -> "Float8Linear":
        weight = linear.weight.detach().float()
        amax = weight.abs().amax(dim=1, keepdim=True) if cls.per_channel else weight.abs().amax()
        scale = (amax / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
        linear.weight = torch.nn.Parameter((weight / scale).to(torch.float8_e4m3fn), requires_grad=False)
        linear.register_buffer("weight_scale", scale.to(weight.device))
        if linear.bias is not None:
            linear.bias.requires_grad_(False)
        linear.__class__ = cls
        linear.compute_dtype = compute_dtype
        return linear

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.to(self.compute_dtype) * self.weight_scale.to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.compute_dtype)
        return torch.nn.functional.linear(x.to(self.compute_dtype), self.dequantized_weight(), bias)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D tensor as float8_e4m3fn rows times one fp32 scale per row (amax / 448): x ~= q * scale."""
    amax = x.abs().amax(dim=1, keepdim=True).float()
    scale = (amax / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


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
    """A frozen Linear stored like `Float8Linear` but with one scale per output channel, whose forward and input
    gradient multiply in float8 (`torch._scaled_mm`, row-wise scales) instead of upcasting the weight.

    Written here because torchao's float8 training keeps the weight in bf16 and re-quantizes it every step (the
    base would not fit 24 GB) and its float8 inference tensors are not meant for a backward pass. Shapes that
    float8 tensor cores refuse (in or out features not a multiple of 16) fall back to the upcast forward."""

    per_channel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_features % 16 or self.out_features % 16:
            return super().forward(x)
        return _Float8Matmul.apply(x, self.weight, self.weight_scale, self.bias, self.compute_dtype)


def store_base(transformer, base_dtype: str, compute_dtype: torch.dtype, device=None) -> dict:
    """Store the frozen block weights of `transformer` as `base_dtype`; returns what was done (for logs).

    With `device`, the model moves there a block at a time, each stored low before the next arrives, so a base
    that fits only quantized (Krea 2 is 25.6 GB in bf16, 13 GB with fp8 blocks) never has to fit whole. nf4
    quantizes on its own way to the GPU."""
    if base_dtype not in BASE_DTYPES:
        raise WeightshopError(f"memory.base_dtype {base_dtype!r}: expected one of {', '.join(BASE_DTYPES)}")
    target = torch.device(device) if device is not None else next(transformer.parameters()).device
    if base_dtype == "fp8-mm" and target.type == "cuda" and torch.cuda.get_device_capability(target) < (8, 9):
        name = torch.cuda.get_device_name(target)
        raise WeightshopError(f"memory.base_dtype fp8-mm multiplies in float8, which {name} cannot (it needs an Ada or "
                              "Hopper GPU or newer: RTX 40xx, L4/L40, H100); use memory.base_dtype: fp8")
    before = weight_bytes(transformer)
    if base_dtype == "nf4":
        _to_nf4(transformer, compute_dtype)
    elif base_dtype != "none":
        for i, block in enumerate(transformer.transformer_blocks):
            if device is not None:
                block.to(device)
            _store_block(block, f"transformer_blocks.{i}.", base_dtype, compute_dtype)
    if device is not None and base_dtype != "nf4":
        transformer.to(device)
    return {"base_dtype": base_dtype, "bytes_before": before, "bytes_after": weight_bytes(transformer)}


def _store_block(block, prefix: str, base_dtype: str, compute_dtype: torch.dtype) -> None:
    if base_dtype in ("fp8", "fp8-mm"):
        kind = Float8Linear if base_dtype == "fp8" else Float8MatmulLinear
        for name, module in list(block.named_modules()):
            if isinstance(module, torch.nn.Linear) and _in_blocks(prefix + name) and "lora_" not in name:
                kind.convert(module, compute_dtype)
    elif base_dtype == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError:
            raise WeightshopError("memory.base_dtype int8 needs torchao: pip install 'weightshop[quant]'") from None
        quantize_(block, Int8WeightOnlyConfig(),
                  filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and _in_blocks(prefix + name))


def _to_nf4(transformer, compute_dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        raise WeightshopError("memory.base_dtype nf4 needs bitsandbytes on a CUDA GPU; on CPU use fp8 or int8")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise WeightshopError("memory.base_dtype nf4 needs bitsandbytes: pip install bitsandbytes") from None
    for name, module in list(transformer.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not (isinstance(child, torch.nn.Linear) and _in_blocks(full)):
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, child_name, q.to("cuda"))


def weight_bytes(module) -> int:
    """Bytes the module's parameters and buffers occupy as stored (quantized tensors at their real size)."""
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None:  # torchao tensor subclass: sum its real components
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total


def compile_blocks(transformer) -> int:
    """Regional compilation: compile the repeated transformer block once instead of the whole graph."""
    transformer.compile_repeated_blocks(dynamic=False)
    return len(transformer.transformer_blocks)
