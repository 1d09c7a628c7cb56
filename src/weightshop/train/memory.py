"""How the frozen base is stored while a LoRA trains on it, and regional compilation.

The base never gets gradients, so it can live in fewer bits than it computes in; only the 28 (on nano: 6)
transformer blocks are stored low, while the embedders, text fusion, time path and final layer stay in the
compute dtype, which is the usual practice for Krea 2 quantized files too (see KREA2.md).

- fp8:  diffusers' layerwise casting: weights stored as float8_e4m3fn, upcast per layer for its forward.
- int8: torchao's int8 weight-only tensors (per-channel scales); peft wraps them in its torchao LoRA layer.
- nf4:  bitsandbytes 4-bit NormalFloat (QLoRA), CUDA only.

The LoRA itself is always added after this step and kept in fp32.
"""

from __future__ import annotations

import torch

from weightshop.errors import WeightshopError

BASE_DTYPES = ("none", "fp8", "int8", "nf4")
# Skip every top-level module except the block stack; never touch norms or LoRA layers.
_KEEP_HIGH = ("^(?!transformer_blocks).", "norm", "lora_")


def _in_blocks(name: str) -> bool:
    return name.startswith("transformer_blocks.") and "norm" not in name


def store_base(transformer, base_dtype: str, compute_dtype: torch.dtype) -> dict:
    """Store the frozen block weights of `transformer` as `base_dtype`; returns what was done (for logs)."""
    if base_dtype not in BASE_DTYPES:
        raise WeightshopError(f"memory.base_dtype {base_dtype!r}: expected one of {', '.join(BASE_DTYPES)}")
    before = weight_bytes(transformer)
    if base_dtype == "fp8":
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype,
                                             skip_modules_pattern=_KEEP_HIGH)
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
