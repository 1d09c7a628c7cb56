"""The nano VAE: a small AutoencoderKLQwenImage (f4) trained on the shapes world.

Same class as Krea 2's VAE, with one fewer downsampling stage: at 64 px an f8 VAE leaves the
transformer a 4x4 token grid, too coarse for shapes; f4 gives 8x8. The pipeline derives its scale
factor from the config, so the same Krea2Pipeline code runs it.

The VAE sees the held-out concepts (stars, stripes) too, as Krea's general-purpose VAE has seen
everything: only the transformer's pretraining keeps them out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightshop.models.qwen_vae import use_fast_paths
from weightshop.nano import world
from weightshop.state import run_loop, warmup_cosine


@dataclass(frozen=True)
class VaeRecipe:
    base_dim: int = 16
    z_dim: int = 8
    dim_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    size: int = 64
    batch: int = 32
    steps: int = 4000
    lr: float = 1e-3
    warmup: int = 200
    kl_weight: float = 1e-6
    edge_weight: float = 0.5
    heldout_fraction: float = 0.2
    seed: int = 0
    save_every_s: float = 120.0


def build_vae(recipe: VaeRecipe = VaeRecipe()):
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=recipe.base_dim, z_dim=recipe.z_dim, dim_mult=list(recipe.dim_mult),
        num_res_blocks=recipe.num_res_blocks, temperal_downsample=[False] * (len(recipe.dim_mult) - 2) + [True],
        latents_mean=[0.0] * recipe.z_dim, latents_std=[1.0] * recipe.z_dim,
    )


def render_batch(rng: np.random.Generator, n: int, size: int, heldout_fraction: float) -> torch.Tensor:
    """n rendered scenes as a (n, 3, 1, size, size) tensor in [-1, 1]."""
    images = []
    for _ in range(n):
        heldout = None
        if rng.random() < heldout_fraction:
            heldout = world.HELDOUT_CONCEPTS[int(rng.integers(len(world.HELDOUT_CONCEPTS)))]
        scene = world.sample_scene(rng, heldout=heldout)
        images.append(np.asarray(world.render(scene, size), dtype=np.float32))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x.unsqueeze(2)


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def vae_loss(vae, x: torch.Tensor, kl_weight: float, edge_weight: float) -> tuple[torch.Tensor, dict]:
    posterior = vae.encode(x).latent_dist
    # The posterior mean, not a sample: at initialisation the posterior std (~1) swamps the tiny means and
    # training stalls; the KL term still keeps the latents bounded for the diffusion model.
    recon = vae.decode(posterior.mode()).sample.float()
    l1 = (recon - x).abs().mean() + (recon - x).pow(2).mean()
    (rdy, rdx), (xdy, xdx) = _edges(recon), _edges(x)
    edge = (rdy - xdy).abs().mean() + (rdx - xdx).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()
    loss = l1 + edge_weight * edge + kl_weight * kl
    return loss, {"l1": l1.item(), "edge": edge.item(), "kl": kl.item()}


def psnr(vae, x: torch.Tensor) -> float:
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_vae(workdir: Path, recipe: VaeRecipe = VaeRecipe(), max_steps: int | None = None,
              progress: Callable[[str, int, int, dict], None] | None = None, deadline: float | None = None):
    """Train (or resume) the VAE in workdir; returns (vae, info). Stops at recipe.steps, max_steps or deadline."""
    torch.manual_seed(recipe.seed)
    vae = build_vae(recipe)
    use_fast_paths(vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)

    def step_loss(step: int):
        # Data of step k depends on (seed, k) alone, so a resumed run sees exactly what an uninterrupted one would.
        x = render_batch(np.random.default_rng([recipe.seed, step]), recipe.batch, recipe.size, recipe.heldout_fraction)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return vae_loss(vae, x, recipe.kl_weight, recipe.edge_weight)

    vae.train()
    info = run_loop("vae", workdir / "vae_state", {"vae": vae}, opt, recipe.steps, recipe.lr,
                    lambda step: warmup_cosine(step, recipe.steps, recipe.warmup), step_loss,
                    max_steps=max_steps, deadline=deadline, progress=progress, save_every_s=recipe.save_every_s)
    return vae.eval(), info


def latent_stats(vae, n: int = 512, size: int = 64, seed: int = 1) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the VAE's latents over world images (the pipeline normalises with them)."""
    rng = np.random.default_rng(seed)
    chunks = []
    with torch.no_grad():
        for start in range(0, n, 64):
            x = render_batch(rng, min(64, n - start), size, 0.2)
            chunks.append(vae.encode(x).latent_dist.mode())
    z = torch.cat(chunks)  # (n, C, 1, h, w)
    dims = (0, 2, 3, 4)
    return z.mean(dims).tolist(), z.std(dims).tolist()
