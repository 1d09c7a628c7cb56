"""How the frozen base is stored while a LoRA trains on it, and regional compilation.

The base never gets gradients, so it can live in fewer bits than it computes in; only the 28 (on nano: 6)
transformer blocks are stored low, while the embedders, text fusion, time path and final layer stay in the
compute dtype, which is the usual practice for Krea 2 quantized files too (see KREA2.md). The quantized Linear
types themselves live in `weightshop.quant.layers`, shared with inference on quantized files:

- fp8:  each block Linear stored as float8_e4m3fn with one fp32 scale (`Float8Linear`), upcast in its forward.
- fp8-mm: float8 with one scale per output channel, matmuls in float8 (`Float8MatmulLinear`, Ada/Hopper).
- int8: int8 weight-only with one scale per output channel (`Int8Linear`).
- nf4:  bitsandbytes 4-bit NormalFloat (QLoRA), CUDA only.

The LoRA itself is always added after this step and kept in fp32.
"""

from __future__ import annotations

import torch

from weightshop.errors import WeightshopError
from weightshop.quant.layers import convert_linears, to_nf4, weight_bytes
from weightshop.train.config import BASE_DTYPES


def _in_blocks(name: str) -> bool:
    return name.startswith("transformer_blocks.") and "norm" not in name


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
        to_nf4(transformer, compute_dtype, select=_in_blocks)
    elif base_dtype != "none":
        for i, block in enumerate(transformer.transformer_blocks):
            if device is not None:
                block.to(device)
            _store_block(block, f"transformer_blocks.{i}.", base_dtype, compute_dtype)
    if device is not None and base_dtype != "nf4":
        transformer.to(device)
    return {"base_dtype": base_dtype, "bytes_before": before, "bytes_after": weight_bytes(transformer)}


def _store_block(block, prefix: str, base_dtype: str, compute_dtype: torch.dtype) -> None:
    convert_linears(block, base_dtype, compute_dtype, select=_in_blocks, prefix=prefix)
