"""One training step, in Krea 2's terms: x_t = (1 - s) x0 + s noise, target v = noise - x0, timestep s.

The default timestep sampler is "shifted": uniform pushed through the same time shift inference uses at this
resolution (mu from the family spec's shift rule), so training spends its steps where sampling does. All
randomness of step k derives from (seed, k, micro-batch), so a resumed run repeats an uninterrupted one exactly
and a batch is the same on any device. `take_step` is the whole step (micro-batches, clipping, optimizer, EMA):
the trainer loops over it and the synthetic step that `weightshop plan` and `weightshop bench` measure calls it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from weightshop.models.latents import pack_latents, position_ids
from weightshop.models.loading import resolve_dtype
from weightshop.models.schedule import loss_weights, noisy_sample, sample_timesteps, velocity_target
from weightshop.models.spec import KREA2
from weightshop.train.config import TrainConfig
from weightshop.train.setup import Prepared, lora_state


def lr_scale(step: int, cfg: TrainConfig) -> float:
    """The learning rate's factor at `step`: linear warm-up, then constant or cosine to the last step."""
    o = cfg.optim
    scale = min(1.0, (step + 1) / o.warmup) if o.warmup else 1.0
    if o.scheduler == "cosine":
        scale *= 0.5 * (1 + math.cos(math.pi * min(step, cfg.schedule.steps) / cfg.schedule.steps))
    return scale


class Batches:
    """Deterministic batches from one aspect bucket at a time: batch k depends on (seed, k) only."""

    def __init__(self, cached, batch_size: int, seed: int):
        self.cached, self.batch_size, self.seed = cached, batch_size, seed
        by_bucket: dict[tuple, list[str]] = {}
        for file in sorted(cached.latents):
            by_bucket.setdefault(cached.buckets[file], []).append(file)
        self.buckets = sorted(by_bucket.items())
        self.weights = np.array([len(files) for _, files in self.buckets], dtype=float)
        self.weights /= self.weights.sum()

    def files(self, step: int, micro: int) -> list[str]:
        rng = np.random.default_rng([self.seed, step, micro, 1])
        _, files = self.buckets[int(rng.choice(len(self.buckets), p=self.weights))]
        return [files[i] for i in rng.choice(len(files), size=self.batch_size, replace=len(files) < self.batch_size)]


def flow_matching_loss(transformer, cached, files: list[str], cfg: TrainConfig, step: int, micro: int,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Krea 2's objective on one batch from the cache, caption dropout applied from the cached empty caption.

    All randomness comes from (seed, step, micro) and is drawn on the CPU, so a batch is the same on any
    device and in any process; tensors move to `device` afterwards.
    """
    rng = np.random.default_rng([cfg.schedule.seed, step, micro, 2])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    x0 = torch.stack([cached.latents[f].float() for f in files])
    dropped = rng.random(len(files)) < cfg.data.caption_dropout
    pairs = [cached.empty if d else cached.embeds[f] for f, d in zip(files, dropped)]
    embeds = torch.stack([e.float() for e, _ in pairs])
    mask = torch.stack([m for _, m in pairs])
    b, c, h, w = x0.shape
    tokens = (h // KREA2.patch_size) * (w // KREA2.patch_size)
    s = sample_timesteps(b, cfg.schedule.timesteps, generator=gen, mean=cfg.schedule.logit_mean,
                         std=cfg.schedule.logit_std, mu=KREA2.shift.mu(tokens))
    noise = torch.randn(x0.shape, generator=gen)
    packed, packed_noise = pack_latents(x0), pack_latents(noise)
    xt = noisy_sample(packed, packed_noise, s.view(-1, 1, 1))
    ids = position_ids(embeds.shape[1], h // 2, w // 2).to(device)
    dtype = resolve_dtype(cfg.model.dtype)
    target = velocity_target(packed, packed_noise).float().to(device)
    xt, embeds, s, mask = xt.to(device, dtype), embeds.to(device, dtype), s.to(device, dtype), mask.to(device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.memory.autocast == "bf16"):
        v = transformer(xt, embeds, s, ids, mask, return_dict=False)[0]
    per_sample = (v.float() - target).pow(2).flatten(1).mean(1)
    weights = loss_weights(s.float(), cfg.schedule.loss_weighting, gamma=cfg.schedule.min_snr_gamma)
    return (weights * per_sample).mean()


def take_step(prepared: Prepared, cached, batches: Batches, cfg: TrainConfig, step: int, device, *,
              model=None, accelerator=None) -> tuple[float, float | None]:
    """Optimizer step number `step` (0-based): the learning rate for it, grad_accum micro-batches (under
    `accelerate launch` each of N processes takes micro-batches rank, rank + N, ...), clipping, the optimizer's
    update and the EMA's. `model` is the module to call (a DDP wrapper under accelerate; default the prepared
    transformer). Returns the step's mean loss over every micro-batch (and process), and the gradient norm before
    clipping (None without clipping)."""
    model = model if model is not None else prepared.model
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    optimizer = prepared.optimizer
    for group in optimizer.param_groups:
        group["lr"] = cfg.optim.lr * lr_scale(step, cfg)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    accum = cfg.schedule.grad_accum
    for micro in range(accum):
        index = micro * world + rank
        sync = accelerator.no_sync(model) if world > 1 and micro < accum - 1 else nullcontext()
        with sync:
            loss = flow_matching_loss(model, cached, batches.files(step, index), cfg, step, index, device)
            (loss / accum).backward()
        total += loss.item() / accum
    if world > 1:
        total = accelerator.reduce(torch.tensor(total, device=device), "mean").item()
    grad_norm = None
    if cfg.optim.max_grad_norm:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(prepared.params, cfg.optim.max_grad_norm))
    optimizer.step()
    if prepared.ema is not None:
        with torch.no_grad():
            for k, v in lora_state(prepared.model).items():
                prepared.ema[k].lerp_(v, 1 - cfg.optim.ema)
    return total, grad_norm
