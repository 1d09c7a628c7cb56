"""The parameters of a run, counted on the meta device, and the bytes the frozen base takes as stored."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightshop.errors import WeightshopError
from weightshop.models.memory import DTYPE_BYTES, stored_weight_bytes, weight_counts
from weightshop.models.shape import ModelShape
from weightshop.train.config import BASE_DTYPES, TrainConfig

if TYPE_CHECKING:
    from weightshop.train.plan.activations import ActivationDtypes

__all__ = ["DTYPE_BYTES", "OPTIMIZER_BYTES", "ParamCounts", "base_weight_bytes", "count_parameters",
           "dequantized_weight_bytes", "dora_norm_bytes"]

# Optimizer state bytes per LoRA parameter: AdamW exp_avg + exp_avg_sq in fp32; bitsandbytes AdamW8bit the same
# in 8 bits plus one fp32 absmax per 256 values each; Prodigy exp_avg, exp_avg_sq, s and the initial copy p0.
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2 * (1 + 4 / 256), "prodigy": 16.0}


@dataclass(frozen=True)
class ParamCounts:
    """Parameter numbers of the transformer with its LoRA, read off a meta-device model."""

    total: int  # base parameters
    fp32_kept: int  # norms: diffusers keeps them in fp32 whatever the model dtype
    quantizable: int  # the blocks' Linear weights: what memory.base_dtype stores quantized
    quantizable_linears: int
    quantizable_out_channels: int
    largest_quantizable: int  # the biggest such weight (nf4 dequantizes one at a time)
    block_linear_weights: tuple[int, ...]  # per transformer block: its Linear weights' elements
    lora: int
    lora_modules: tuple[str, ...]
    lora_shapes: tuple[tuple[int, int], ...] = ()  # (out, in) of each adapted Linear, in lora_modules' order


@functools.lru_cache(maxsize=32)
def _count_on_meta(config_key: str, lora_key: str) -> ParamCounts:
    """The base's numbers come from `models.memory.weight_counts` (shared with inference's plan); the LoRA's from
    the trainer's own `add_lora` on a meta model."""
    import torch
    from diffusers import Krea2Transformer2DModel

    from weightshop.train.config import LoraConfig
    from weightshop.train.setup import add_lora

    config = json.loads(config_key)
    base = weight_counts(config)
    lora = LoraConfig.model_validate(json.loads(lora_key))
    with torch.device("meta"):
        model = Krea2Transformer2DModel.from_config(config)
        add_lora(model, lora, "meta")  # the trainer's own LoRA setup (LoRA or DoRA, its targets)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    modules = tuple(sorted({n.split(".lora_")[0] for n, _ in model.named_parameters() if "lora_" in n}))
    adapted = dict(model.named_modules())
    shapes = tuple((adapted[n].out_features, adapted[n].in_features) for n in modules)
    return ParamCounts(base.total, base.fp32_kept, base.quantizable, base.quantizable_linears,
                       base.quantizable_out_channels, base.largest_quantizable, base.block_linear_weights, lora,
                       modules, shapes)


def count_parameters(shape: ModelShape, cfg: TrainConfig) -> ParamCounts:
    """Base and LoRA parameters of `shape` with the run's LoRA (cfg.lora: rank, targets, DoRA), set up by the
    trainer's own `add_lora` on the meta device (no weights)."""
    return _count_on_meta(shape.key(), json.dumps(cfg.lora.model_dump(mode="json"), sort_keys=True))


def dora_norm_bytes(counts: ParamCounts, dt: "ActivationDtypes") -> int:
    """DoRA's transient per adapted Linear, one module at a time: peft rebuilds the LoRA delta from an identity
    matrix (in x in, compute dtype) into an (in x out) fp32 weight and adds it to the frozen weight (fp32) to take
    the row norms that divide the magnitudes; the largest module sets the peak."""
    return max((i * i * dt.compute + 2 * i * o * 4 for o, i in counts.lora_shapes), default=0)


def base_weight_bytes(counts: ParamCounts, model_dtype: str, base_dtype: str = "none") -> int:
    """The frozen base as stored; a quantized base's bytes come from `quant.formats.stored_bytes`, the one place a
    quantized Linear's size is computed (training's base_dtype names are format names there)."""
    if base_dtype not in BASE_DTYPES:
        raise WeightshopError(f"unknown memory.base_dtype {base_dtype!r}: expected {', '.join(BASE_DTYPES)}")
    return stored_weight_bytes(counts, model_dtype, base_dtype)


def dequantized_weight_bytes(counts: ParamCounts, base_dtype: str, checkpointing: bool, dt: "ActivationDtypes") -> int:
    """Compute-dtype copies of quantized weights alive at the peak.

    fp8 (`Float8Linear`) and int8 (`Int8Linear`) upcast a Linear's weight for its forward, and
    the matmul keeps that copy for the backward: without checkpointing every block's weights come back in bf16 (the
    saving is gone at the peak), with it only the recomputed block's (measured on CPU: docs/memory.md). bitsandbytes
    nf4 keeps its packed state and dequantizes again in backward: one weight at a time, forward and backward.
    fp8-mm (`Float8MatmulLinear`) multiplies in float8 and upcasts only in backward, one weight at a time.
    """
    if base_dtype == "none":
        return 0
    if base_dtype == "nf4":
        return 2 * counts.largest_quantizable * dt.compute
    if base_dtype == "fp8-mm":
        return counts.largest_quantizable * dt.compute
    weights = max(counts.block_linear_weights) if checkpointing else sum(counts.block_linear_weights)
    return weights * dt.compute
