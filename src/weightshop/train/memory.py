"""How the frozen base is stored while a LoRA trains on it, and regional compilation.

The base never gets gradients, so it can live in fewer bits than it computes in; only the 28 (on nano: 6)
transformer blocks are stored low, while the embedders, text fusion, time path and final layer stay in the
compute dtype, which is the usual practice for Krea 2 quantized files too (see KREA2.md).

- fp8:  each block Linear stored as float8_e4m3fn with one fp32 scale (the "fp8 scaled" layout of ComfyUI's
        Krea 2 files), upcast inside its own forward (`Float8Linear`).
- int8: torchao's int8 weight-only tensors (per-channel scales); peft wraps them in its torchao LoRA layer.
- nf4:  bitsandbytes 4-bit NormalFloat (QLoRA), CUDA only.

The LoRA itself is always added after this step and kept in fp32.
"""

from __future__ import annotations

import torch

from weightshop.errors import WeightshopError

BASE_DTYPES = ("none", "fp8", "int8", "nf4")
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

    @classmethod
    def convert(cls, linear: torch.nn.Linear, compute_dtype: torch.dtype) -> "Float8Linear":
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax() / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
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


def store_base(transformer, base_dtype: str, compute_dtype: torch.dtype) -> dict:
    """Store the frozen block weights of `transformer` as `base_dtype`; returns what was done (for logs)."""
    if base_dtype not in BASE_DTYPES:
        raise WeightshopError(f"memory.base_dtype {base_dtype!r}: expected one of {', '.join(BASE_DTYPES)}")
    before = weight_bytes(transformer)
    if base_dtype == "fp8":
        for name, module in list(transformer.named_modules()):
            if isinstance(module, torch.nn.Linear) and _in_blocks(name) and "lora_" not in name:
                Float8Linear.convert(module, compute_dtype)
    elif base_dtype == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError:
            raise WeightshopError("memory.base_dtype int8 needs torchao: pip install 'weightshop[quant]'") from None
        quantize_(transformer, Int8WeightOnlyConfig(),
                  filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and _in_blocks(name))
    elif base_dtype == "nf4":
        _to_nf4(transformer, compute_dtype)
    return {"base_dtype": base_dtype, "bytes_before": before, "bytes_after": weight_bytes(transformer)}


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
