"""The trainer's own step on a random-weight transformer and a synthetic cache.

Speed and memory do not depend on the weight values, so a Krea2Transformer2DModel of any size (full Krea 2
included) built with random weights, fed random latents and text features of the right shapes, costs what
the real checkpoint costs. `weightshop plan` measures this step's memory to calibrate its model;
`weightshop bench` times it. Both take the run's own `TrainConfig` and run the trainer's own code on it:
`train.setup.prepare` (base storage, LoRA or DoRA, compile, optimizer, EMA) and `train.step.take_step`
(micro-batches, clipping, optimizer and EMA updates).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from weightshop.train.config import TrainConfig


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
    """A prepared model and a synthetic batch source, ready to take the trainer's step again and again."""

    prepared: object  # train.setup.Prepared
    cache: SimpleNamespace
    batches: object  # train.step.Batches
    cfg: TrainConfig
    device: str
    taken: int = 0
    last_loss: float = float("nan")
    last_grad_norm: float = float("nan")

    @property
    def model(self) -> torch.nn.Module:
        return self.prepared.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.prepared.optimizer

    @property
    def params(self) -> list:
        return self.prepared.params

    @property
    def names(self) -> list[str]:
        return self.prepared.names

    @property
    def ema(self) -> dict | None:
        return self.prepared.ema

    def __call__(self) -> None:
        from weightshop.train.step import take_step

        loss, grad_norm = take_step(self.prepared, self.cache, self.batches, self.cfg, self.taken, self.device)
        self.last_loss = loss
        self.last_grad_norm = float("nan") if grad_norm is None else grad_norm
        self.taken += 1


def trainer_step(cfg: TrainConfig, config: dict | None, height: int, width: int | None = None, *,
                 device: str = "cpu", vae_scale: int = 8, text_tokens: int = 512) -> TrainerStep:
    """Build `config` (a Krea2Transformer2DModel config; None: full Krea 2) with random weights in
    `cfg.model.dtype` and set it up for `cfg` exactly as the trainer does; batches of `cfg.schedule.batch_size`
    at height x width with `text_tokens` text tokens. The random weights and data derive from cfg.schedule.seed."""
    from weightshop.models.loading import resolve_dtype
    from weightshop.train.setup import prepare
    from weightshop.train.step import Batches

    width = width or height
    seed = cfg.schedule.seed
    model = random_transformer(config, device, resolve_dtype(cfg.model.dtype), seed)
    torch.manual_seed(seed)  # the LoRA's initialisation, as the trainer seeds it
    prepared = prepare(model, cfg, device)
    model.train()
    batch = cfg.schedule.batch_size
    cache = synthetic_cache(model.config, height, width, max(4, batch), text_tokens, vae_scale, seed)
    return TrainerStep(prepared, cache, Batches(cache, batch, seed), cfg, device)
