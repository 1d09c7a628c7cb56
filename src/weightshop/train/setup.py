"""Setting a transformer up for LoRA training: the one setup the trainer, `weightshop plan`'s calibration and
`weightshop bench` all run, so what is planned and timed is what trains.

In order: the frozen base stored as `memory.base_dtype` (moved to the device a block at a time), peft's LoRA (or
DoRA) on the resolved targets in fp32, gradient checkpointing, regional compile, the optimizer and the LoRA's EMA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weightshop.errors import WeightshopError
from weightshop.models.loading import resolve_dtype
from weightshop.train.config import LoraConfig as LoraSection
from weightshop.train.config import TrainConfig
from weightshop.train.targets import resolve_targets

ADAPTER = "weightshop"  # the peft adapter name the trainer trains under


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype the blocks compute in: bf16 under autocast, else the model's."""
    return torch.bfloat16 if cfg.memory.autocast == "bf16" else resolve_dtype(cfg.model.dtype)


def make_optimizer(params, cfg: TrainConfig):
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    if o.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise WeightshopError("optim.name adamw8bit needs bitsandbytes (CUDA only): pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise WeightshopError("optim.name prodigy needs prodigyopt: pip install prodigyopt") from None
    return Prodigy(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)


def add_lora(transformer, lora: LoraSection, device,
             gradient_checkpointing: bool = False) -> tuple[list[str], list[torch.nn.Parameter]]:
    """The run's peft LoRA (the config's `lora` section) on its resolved targets, trainable in fp32 on `device`;
    gradient checkpointing if asked. `weightshop plan` counts parameters with this same function."""
    from peft import LoraConfig

    names = resolve_targets(transformer, lora.targets, lora.text_fusion)
    transformer.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                       target_modules=names, use_dora=lora.dora, init_lora_weights=True),
                            adapter_name=ADAPTER)
    transformer.to(device)
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return names, params


def lora_state(transformer) -> dict[str, torch.Tensor]:
    """The adapter's weights (peft state-dict names), detached fp32 copies."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().contiguous()
            for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}


@dataclass
class Prepared:
    """A transformer ready to train: its LoRA's module names and parameters, optimizer, EMA and base storage."""

    model: torch.nn.Module
    names: list[str]
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: dict[str, torch.Tensor] | None
    base: dict  # what memory.store_base did (for logs)

    def weights(self) -> dict[str, torch.Tensor]:
        """What the LoRA file gets: the EMA when the run keeps one, else the current weights."""
        return self.ema if self.ema is not None else lora_state(self.model)


def prepare(transformer, cfg: TrainConfig, device) -> Prepared:
    """Store the frozen base, add the LoRA, compile, build the optimizer and the EMA, as `cfg` says."""
    from weightshop.models.compiled import compile_blocks
    from weightshop.train.memory import store_base

    transformer.requires_grad_(False)
    base = store_base(transformer, cfg.memory.base_dtype, compute_dtype(cfg), device=device)
    names, params = add_lora(transformer, cfg.lora, device, cfg.memory.gradient_checkpointing)
    if cfg.memory.compile:
        compile_blocks(transformer)
    optimizer = make_optimizer(params, cfg)
    ema = {k: v.clone() for k, v in lora_state(transformer).items()} if cfg.optim.ema else None
    return Prepared(transformer, names, params, optimizer, ema, base)
