"""Tiny random-weight Krea 2 components, built offline in about a second.

Same classes and code path as the real model (Krea2Transformer2DModel, AutoencoderKLQwenImage,
Qwen3VLModel, Krea2Pipeline, the Qwen2 tokenizer with Krea's 34 + 5 token template), at a size where
a whole generation takes milliseconds. The tests use them, and so does `weightshop doctor --self-test`.
They prove plumbing, never quality: quality is krea2-nano's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from weightshop.io import atomic_save_safetensors, atomic_write_json
from weightshop.models.keys import diffusers_to_original
from weightshop.models.loading import MODEL_DEFAULTS
from weightshop.models.spec import KREA2

WORDS = (
    "a an the of on in and with small large tiny big red green blue yellow purple orange white black "
    "gray beige navy circle square triangle star striped outlined solid left right above below top "
    "bottom center background photo image shape shapes object objects cat dog fox snow mountain sky"
).split()


@dataclass(frozen=True)
class TinySizes:
    vocab_size: int = 600
    text_hidden: int = 32
    text_layers: int = 4
    select_layers: tuple[int, ...] = (2, 3, 4)
    z_dim: int = 4
    vae_base_dim: int = 8
    hidden_heads: int = 2
    head_dim: int = 16
    layers: int = 2
    size: int = 32  # default image side
    max_sequence_length: int = 32


TINY = TinySizes()


def tiny_corpus() -> list[str]:
    return [" ".join(WORDS[i:i + 8]) for i in range(len(WORDS))] * 4


def tiny_tokenizer(sizes: TinySizes = TINY):
    from weightshop.models.tokenizer import train_krea2_tokenizer

    return train_krea2_tokenizer(tiny_corpus(), vocab_size=sizes.vocab_size)


def tiny_text_encoder(vocab_size: int, sizes: TinySizes = TINY, seed: int = 0):
    from transformers import Qwen3VLConfig, Qwen3VLModel

    torch.manual_seed(seed)
    heads = 4
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=sizes.text_hidden, intermediate_size=2 * sizes.text_hidden,
            num_hidden_layers=sizes.text_layers, num_attention_heads=heads, num_key_value_heads=2,
            head_dim=sizes.text_hidden // heads, max_position_embeddings=1024,
            rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                           out_hidden_size=sizes.text_hidden, deepstack_visual_indexes=[]),
    )
    return Qwen3VLModel(config).eval()


def tiny_vae(sizes: TinySizes = TINY, seed: int = 0):
    """An f4 AutoencoderKLQwenImage (one fewer downsampling stage than Krea 2's f8)."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=sizes.vae_base_dim, z_dim=sizes.z_dim, dim_mult=[1, 2, 4], num_res_blocks=1,
        temperal_downsample=[False, True], latents_mean=[0.0] * sizes.z_dim, latents_std=[1.0] * sizes.z_dim,
    ).eval()


def tiny_transformer(sizes: TinySizes = TINY, seed: int = 0):
    from diffusers import Krea2Transformer2DModel

    torch.manual_seed(seed)
    hidden = sizes.hidden_heads * sizes.head_dim
    model = Krea2Transformer2DModel(
        in_channels=sizes.z_dim * 4, num_layers=sizes.layers, attention_head_dim=sizes.head_dim,
        num_attention_heads=sizes.hidden_heads, num_key_value_heads=1, intermediate_size=2 * hidden,
        timestep_embed_dim=32, text_hidden_dim=sizes.text_hidden, num_text_layers=len(sizes.select_layers),
        text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=2 * sizes.text_hidden,
        num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6), rope_theta=1000.0,
    )
    # diffusers zero-initialises the modulation tables; small random values make the tiny model's output
    # depend on every parameter, so tests of loading and LoRA catch a weight that went astray.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "scale_shift_table" in name or name.endswith("norm.weight") or "norm_" in name:
                param.normal_(0.0, 0.1)
    return model.eval()


def write_tiny_krea2(path: str | Path, *, checkpoint: str = "raw", seed: int = 0,
                     sizes: TinySizes = TINY, tokenizer=None) -> Path:
    """Write a complete diffusers-format Krea 2 directory with tiny random weights."""
    from weightshop.models.loading import SharedComponents, build_pipeline

    path = Path(path)
    tokenizer = tokenizer or tiny_tokenizer(sizes)
    shared = SharedComponents(
        vae=tiny_vae(sizes, seed), text_encoder=tiny_text_encoder(len(tokenizer), sizes, seed),
        tokenizer=tokenizer, select_layers=sizes.select_layers, path=path,
    )
    transformer = tiny_transformer(sizes, seed + (1000 if checkpoint == "turbo" else 0))
    pipe = build_pipeline(transformer, shared, KREA2.checkpoint(checkpoint))
    pipe.save_pretrained(path)
    atomic_write_json(path / MODEL_DEFAULTS, {
        "family": "krea2", "name": f"krea2-tiny-random-{checkpoint}", "checkpoint": checkpoint,
        "default_size": sizes.size, "max_sequence_length": sizes.max_sequence_length,
        "text_encoder_select_layers": list(sizes.select_layers),
        "about": "random tiny weights for tests: plumbing only, no quality",
    })
    return path


def write_single_file(transformer, path: str | Path, original_names: bool = True) -> Path:
    """Save a transformer as one safetensors file, in the official key layout by default."""
    state = transformer.state_dict()
    if original_names:
        state = diffusers_to_original(state)
    return atomic_save_safetensors(path, state)
