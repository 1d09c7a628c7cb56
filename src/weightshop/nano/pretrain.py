"""nano-Raw: a small Krea2Transformer2DModel pretrained on the shapes world with Krea 2's objective.

x_t = (1 - s) x0 + s noise, target v = noise - x0, timestep s drawn as sampling visits it, 10 % caption dropout
so classifier-free guidance works. Text goes through the real Krea2Pipeline.encode_prompt and latents
through the pipeline's own packing, so training sees exactly what sampling will feed the model.
Held-out concepts (stars, stripes) never appear in these images or captions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from weightshop.io import atomic_save_safetensors
from weightshop.models.latents import pack_latents, position_ids
from weightshop.models.schedule import image_tokens, noisy_sample, sample_timesteps, velocity_target
from weightshop.models.spec import KREA2
from weightshop.nano import world
from weightshop.state import run_loop, warmup_cosine


@dataclass(frozen=True)
class TransformerRecipe:
    hidden_heads: int = 4
    head_dim: int = 64
    kv_heads: int = 2
    layers: int = 6
    intermediate: int = 768
    axes_dims_rope: tuple[int, int, int] = (16, 24, 24)
    timestep_embed_dim: int = 128
    text_heads: int = 4
    text_intermediate: int = 128
    fusion_blocks: tuple[int, int] = (2, 2)
    # training
    dataset_scenes: int = 60000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 500
    steps: int = 5000  # 320k samples: about 1.4 CPU hours with torch.compile
    # Timesteps as sampling visits them (uniform pushed through the training size's mu). Logit-normal(0, 1)
    # almost never visits s > 0.97 (0.02 % of samples), yet the sampler starts at s = 1 where layout and colour
    # are decided: a Raw trained on it learns the text but its samples ignore the prompt (README, "krea2-nano").
    timesteps: str = "shifted"
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    save_every_s: float = 180.0
    # sha256 of a Raw transformer's weights to begin from instead of the seeded init (a continuation of an
    # earlier build; `weightshop nano seed` puts those weights in the workdir). None trains from scratch.
    warm_start: str | None = None


def build_transformer(in_channels: int, text_hidden: int, num_text_layers: int,
                      recipe: TransformerRecipe = TransformerRecipe()):
    from diffusers import Krea2Transformer2DModel

    return Krea2Transformer2DModel(
        in_channels=in_channels, num_layers=recipe.layers, attention_head_dim=recipe.head_dim,
        num_attention_heads=recipe.hidden_heads, num_key_value_heads=recipe.kv_heads,
        intermediate_size=recipe.intermediate, timestep_embed_dim=recipe.timestep_embed_dim,
        text_hidden_dim=text_hidden, num_text_layers=num_text_layers,
        text_num_attention_heads=recipe.text_heads, text_num_key_value_heads=recipe.text_heads,
        text_intermediate_size=recipe.text_intermediate, num_layerwise_text_blocks=recipe.fusion_blocks[0],
        num_refiner_text_blocks=recipe.fusion_blocks[1], axes_dims_rope=recipe.axes_dims_rope,
    )


class Conditioner:
    """The pipeline's own text encoding, latent normalisation and packing, for training."""

    def __init__(self, pipe, max_sequence_length: int):
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        vae = pipe.vae
        self.mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)

    @torch.no_grad()
    def text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipe.encode_prompt(captions, device=torch.device("cpu"),
                                       max_sequence_length=self.max_sequence_length)

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents (B, C, h, w) -> the transformer's space (inverse of the pipeline's decode step)."""
        return (z - self.mean) / self.std

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_latents(latents, self.pipe.patch_size)

    def position_ids(self, text_len: int, h: int, w: int) -> torch.Tensor:
        """Rotary coordinates for text_len text tokens and an h x w latent grid."""
        p = self.pipe.patch_size
        return position_ids(text_len, h // p, w // p)


def encode_scenes(vae, scenes: list, size: int = 64, batch: int = 128,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """VAE latent means (N, C, h, w) of the rendered scenes, computed once and reused every epoch."""
    from weightshop.models.qwen_vae import use_fast_paths

    use_fast_paths(vae)
    out = []
    with torch.no_grad():
        for start in range(0, len(scenes), batch):
            chunk = scenes[start:start + batch]
            x = torch.from_numpy(np.stack([np.asarray(world.render(s, size), np.float32) for s in chunk]))
            x = (x.permute(0, 3, 1, 2) / 127.5 - 1.0).unsqueeze(2)
            out.append(vae.encode(x).latent_dist.mode()[:, :, 0].to(torch.bfloat16))
            if progress:
                progress(min(start + batch, len(scenes)), len(scenes))
    return torch.cat(out)


def scene_to_json(scene) -> dict:
    return {"objects": [asdict(o) for o in scene.objects], "background": scene.background,
            "position": scene.position, "relation": scene.relation, "seed": scene.seed}


def scene_from_json(d: dict):
    return world.Scene(tuple(world.ObjectSpec(**o) for o in d["objects"]), d["background"], d["position"],
                       d["relation"], d["seed"])


def pretraining_scenes(n: int, seed: int) -> list:
    """The n pretraining scenes (no held-out concepts) of a recipe seed: a pure function of (n, seed)."""
    rng = np.random.default_rng([seed, 11])
    return [world.sample_scene(rng) for _ in range(n)]


def latent_dataset(workdir: Path, vae, n: int, seed: int, progress=None) -> tuple[list, torch.Tensor]:
    """Pretraining scenes (no held-out concepts) and their latents, cached in workdir."""
    lat_path, scenes_path = workdir / "raw_latents.safetensors", workdir / "raw_scenes.json"
    if lat_path.is_file() and scenes_path.is_file():
        scenes = [scene_from_json(d) for d in json.loads(scenes_path.read_text())]
        latents = load_file(str(lat_path))["latents"]
        if len(scenes) == len(latents) == n:
            return scenes, latents
    scenes = pretraining_scenes(n, seed)
    latents = encode_scenes(vae, scenes, progress=progress)
    atomic_save_safetensors(lat_path, {"latents": latents})
    scenes_path.write_text(json.dumps([scene_to_json(s) for s in scenes]))
    return scenes, latents


def flow_loss(transformer, cond: Conditioner, x0: torch.Tensor, embeds, mask, s: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """Krea 2's objective on packed latents x0 (B, L, C): MSE between predicted and true velocity."""
    b, c, h, w = x0.shape
    packed = cond.pack(x0)
    noise = cond.pack(noise)
    xt = noisy_sample(packed, noise, s.view(-1, 1, 1))
    ids = cond.position_ids(embeds.shape[1], h, w)
    v = transformer(xt, embeds, s, ids, mask, return_dict=False)[0]
    return F.mse_loss(v.float(), velocity_target(packed, noise).float())


def captioned_batch_loss(forward, cond: Conditioner, scenes: list, latents: torch.Tensor, key: list[int], batch: int,
                         caption_dropout: float, timesteps) -> tuple[torch.Tensor, dict]:
    """One pretraining batch: scenes, fresh caption phrasings (dropped to "" at caption_dropout), timesteps from
    `timesteps(n, generator)`, noise. Everything derives from `key` (seed, step, stage), so a resumed run repeats
    an uninterrupted one exactly."""
    rng = np.random.default_rng(key)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    idx = rng.integers(len(scenes), size=batch)
    captions = ["" if rng.random() < caption_dropout else world.caption(scenes[i], int(rng.integers(2**31)))
                for i in idx]
    embeds, mask = cond.text(captions)
    x0 = cond.normalise(latents[torch.from_numpy(idx)].float())
    s = timesteps(batch, gen)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return flow_loss(forward, cond, x0, embeds, mask, s, noise), {}


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach().float(), 1.0 - decay)


def train_raw(workdir: Path, pipe, max_sequence_length: int, recipe: TransformerRecipe = TransformerRecipe(),
              size: int = 64, max_steps: int | None = None, deadline: float | None = None,
              progress: Callable[[str, int, int, dict], None] | None = None, compile: bool = False):
    """Pretrain (or resume) nano-Raw; `pipe` holds the trained VAE, text encoder and a fresh transformer.

    `compile` runs the training forward through torch.compile: on CPU the step is dominated by small
    elementwise ops (norms, rotary, modulation) that inductor fuses, about 2.5x faster after a
    two-minute compile. Returns the EMA transformer and the run info.
    """
    import copy

    torch.manual_seed(recipe.seed)
    model = pipe.transformer.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    cond = Conditioner(pipe, max_sequence_length)
    scenes, latents = latent_dataset(workdir, pipe.vae, recipe.dataset_scenes, recipe.seed,
                                     (lambda d, t: progress("encode", d, t, {})) if progress else None)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.99))
    forward = torch.compile(model) if compile else model
    mu = KREA2.shift.mu(image_tokens(size, size, pipe.vae_scale_factor, pipe.patch_size))

    def step_loss(step: int):
        return captioned_batch_loss(forward, cond, scenes, latents, [recipe.seed, step, 5], recipe.batch,
                                    recipe.caption_dropout,
                                    lambda n, gen: sample_timesteps(n, recipe.timesteps, generator=gen, mu=mu))

    info = run_loop("raw", workdir / "raw_state", {"model": model, "ema": ema}, opt, recipe.steps, recipe.lr,
                    lambda step: warmup_cosine(step, recipe.steps, recipe.warmup, decay_from=0.8), step_loss,
                    max_steps=max_steps, deadline=deadline, progress=progress, save_every_s=recipe.save_every_s,
                    after_step=lambda step: ema_update(ema, model, recipe.ema_decay if step > recipe.warmup else 0.0))
    return ema, info
