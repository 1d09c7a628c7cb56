"""The trainer's own step on a random-weight transformer and a synthetic cache.

Speed and memory do not depend on the weight values, so a Krea2Transformer2DModel of any size (full Krea 2
included) built with random weights, fed random latents and text features of the right shapes, costs what
the real checkpoint costs. `weightshop plan` measures this step's memory to calibrate its model;
`weightshop bench` times it. Both run the same setup: the base stored by `train.memory.store_base`, peft LoRA
from `trainer.add_lora`, `trainer.flow_matching_loss`, gradient clipping and the run's optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch


def random_transformer(config: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                       seed: int = 0):
    """A Krea2Transformer2DModel (full size without a config) with small random weights, built on the meta
    device and materialised straight on `device` in `dtype`: never an fp32 copy (12.8 B in fp32 is 48 GiB)."""
    from accelerate import init_empty_weights
    from diffusers import Krea2Transformer2DModel

    with init_empty_weights():
        model = Krea2Transformer2DModel(**(config or {}))
    model = model.to(dtype).to_empty(device=device)
    keep = set(model._keep_in_fp32_modules or ())
    for name, module in model.named_modules():  # as from_pretrained(torch_dtype=...) does
        if name.rsplit(".", 1)[-1] in keep:
            module.float()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02 / max(1.0, (p.shape[-1] / 1024) ** 0.5), generator=gen)
        for b in model.buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                b.zero_()
    return model.eval()


def synthetic_cache(config: dict, height: int, width: int, items: int, text_tokens: int, vae_scale: int,
                    seed: int = 0) -> SimpleNamespace:
    """The shape of weightshop.data.cache.CachedSet (latents, text features, the empty caption, buckets), random."""
    channels = config["in_channels"] // 4  # packed 2x2 patches of the VAE latent
    grid = (height // vae_scale, width // vae_scale)
    gen = torch.Generator().manual_seed(seed)
    text_shape = (text_tokens, config["num_text_layers"], config["text_hidden_dim"])
    latents, embeds = {}, {}
    for i in range(items):
        latents[f"i{i}"] = torch.randn(channels, *grid, generator=gen)
        embeds[f"i{i}"] = (torch.randn(text_shape, generator=gen), torch.ones(text_tokens, dtype=torch.bool))
    empty_mask = torch.zeros(text_tokens, dtype=torch.bool)
    empty_mask[:8] = True
    return SimpleNamespace(latents=latents, embeds=embeds, empty=(torch.randn(text_shape, generator=gen), empty_mask),
                           buckets={k: (height, width) for k in latents})


@dataclass
class TrainerStep:
    """A model with its LoRA, optimizer and batch, ready to take the trainer's step again and again."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list
    names: list[str]
    cache: SimpleNamespace
    cfg: object
    device: str
    ema: dict | None = None
    taken: int = 0
    last_loss: float = float("nan")
    last_grad_norm: float = float("nan")

    def __call__(self) -> None:
        from weightshop.train.trainer import flow_matching_loss

        files = sorted(self.cache.latents)[:self.cfg.schedule.batch_size]
        self.optimizer.zero_grad(set_to_none=True)
        loss = flow_matching_loss(self.model, self.cache, files, self.cfg, self.taken, 0, self.device)
        loss.backward()
        self.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, 1.0))
        self.optimizer.step()
        self.last_loss = loss.item()
        self.taken += 1


def trainer_step(config: dict | None, settings, height: int, width: int | None = None, *, device: str = "cpu",
                 vae_scale: int = 8, text_tokens: int = 512, seed: int = 0) -> TrainerStep:
    """Build `config` (None: full Krea 2) with random weights and set it up as the trainer does for `settings`
    (a train.plan.RunSettings): model dtype, frozen base storage, LoRA, checkpointing, regional compile,
    optimizer and the LoRA's EMA."""
    from weightshop.models.loading import DTYPES
    from weightshop.train.config import load_config
    from weightshop.train.memory import compile_blocks, store_base
    from weightshop.train.trainer import _optimizer, add_lora, lora_state

    width = width or height
    targets = list(settings.targets) if isinstance(settings.targets, tuple) else settings.targets
    cfg = load_config(base={
        "data": {"manifest": "-", "caption_dropout": 0.0}, "model": {"dtype": settings.model_dtype},
        "lora": {"rank": settings.rank, "targets": targets, "text_fusion": settings.text_fusion,
                 "dropout": settings.lora_dropout},
        "schedule": {"batch_size": settings.batch_size, "seed": seed}, "optim": {"name": settings.optimizer},
        "memory": {"gradient_checkpointing": settings.checkpointing, "autocast": settings.autocast,
                   "base_dtype": settings.base_dtype}})
    model = random_transformer(config, device, DTYPES[settings.model_dtype], seed)
    model.requires_grad_(False)
    compute = torch.bfloat16 if settings.autocast == "bf16" else DTYPES[settings.model_dtype]
    store_base(model, settings.base_dtype, compute)
    names, params = add_lora(model, cfg, device)
    if settings.compile:
        compile_blocks(model)
    model.train()
    optimizer = _optimizer(params, cfg)
    ema = {k: v.clone() for k, v in lora_state(model).items()} if settings.ema else None
    cache = synthetic_cache(model.config, height, width, max(4, settings.batch_size), text_tokens, vae_scale, seed)
    return TrainerStep(model, optimizer, params, names, cache, cfg, device, ema)
