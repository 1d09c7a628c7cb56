"""A model's shape, read from its configs and safetensors headers only: the one place it is worked out.

`weightshop info` describes a model with it, `weightshop plan` predicts memory from it and the benchmarks
build random-weight transformers of it. Nothing here reads a weight: Krea 2's 25 GB transformer costs a
header read.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.io import read_json, safetensors_shapes
from weightshop.models.keys import is_original_layout, original_to_diffusers_key
from weightshop.models.schedule import image_tokens
from weightshop.models.spec import KREA2, FamilySpec


@dataclass(frozen=True)
class ModelShape:
    """A transformer's config and how pixels become its tokens."""

    name: str
    config: dict  # Krea2Transformer2DModel's config
    vae_scale_factor: int
    patch_size: int
    max_sequence_length: int
    default_size: int

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * self.patch_size

    def image_tokens(self, height: int, width: int) -> int:
        return image_tokens(height, width, self.vae_scale_factor, self.patch_size)

    def key(self) -> str:
        return json.dumps(self.config, sort_keys=True, default=list)


def class_defaults(cls) -> dict:
    """The keyword defaults of a class's __init__ (diffusers models: the full-size config)."""
    import inspect

    return {k: list(p.default) if isinstance(p.default, tuple) else p.default
            for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}


def full_size_shape(family: FamilySpec = KREA2) -> ModelShape:
    """Krea 2 at full size: the defaults of diffusers' Krea2Transformer2DModel and of the Qwen-Image VAE."""
    from diffusers import AutoencoderKLQwenImage, Krea2Transformer2DModel

    return ModelShape(f"{family.name} (full size)", class_defaults(Krea2Transformer2DModel),
                      family.vae_scale(class_defaults(AutoencoderKLQwenImage)), family.patch_size,
                      family.max_sequence_length, family.default_size)


def weight_files(source) -> list[Path]:
    """The transformer's safetensors files of a resolved `loading.ModelSource` (shards sorted)."""
    if source.kind == "single_file":
        return [source.transformer]
    return sorted((source.transformer / "transformer").glob("*.safetensors"))


def file_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from one weight file's header: safetensors, or GGUF (logical shapes, not block bytes)."""
    if Path(path).suffix == ".gguf":
        from weightshop.quant.gguf_file import gguf_shapes

        return gguf_shapes(path)
    return safetensors_shapes(path)


def weight_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Diffusers-named weight shapes of a transformer's files, from their headers (either key layout)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(file_shapes(f))
    if is_original_layout(shapes):
        # The original layout stores some tensors fused or flat; the diffusers names give the config's shapes.
        return original_shapes_to_diffusers(shapes)
    return shapes


def original_shapes_to_diffusers(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    import torch

    from weightshop.models.keys import original_to_diffusers

    meta = original_to_diffusers({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    return {k: tuple(v.shape) for k, v in meta.items()}


def transformer_config(source) -> dict:
    """Krea2Transformer2DModel's config for a resolved source: its config.json, or (a single file) what the
    header's shapes say, completed by a config.json in the components directory."""
    if source.kind == "diffusers":
        config = read_json(source.transformer / "transformer" / "config.json")
    else:
        config = {**infer_transformer_config(weight_shapes([source.transformer])),
                  **read_json(source.components / "transformer" / "config.json")}
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _count(prefix: str, keys) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def infer_transformer_config(shapes: dict[str, tuple[int, ...]]) -> dict:
    """Recover Krea2Transformer2DModel's config from diffusers-named weight shapes.

    The official single file carries no config. Every size is visible in a weight's shape except the
    rotary split, which is Krea 2's (32, 48, 48) at head_dim 128 and must come from a config otherwise.
    """
    try:
        hidden, in_channels = shapes["img_in.weight"]
        head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
        text_hidden = shapes["txt_in.linear_1.weight"][1]
        text_head_dim = shapes["text_fusion.layerwise_blocks.0.attn.norm_q.weight"][0]
        config = {
            "in_channels": in_channels,
            "num_layers": _count("transformer_blocks.", shapes),
            "attention_head_dim": head_dim,
            "num_attention_heads": hidden // head_dim,
            "num_key_value_heads": shapes["transformer_blocks.0.attn.to_k.weight"][0] // head_dim,
            "intermediate_size": shapes["transformer_blocks.0.ff.gate.weight"][0],
            "timestep_embed_dim": shapes["time_embed.linear_1.weight"][1],
            "text_hidden_dim": text_hidden,
            "num_text_layers": shapes["text_fusion.projector.weight"][1],
            "text_num_attention_heads": text_hidden // text_head_dim,
            "text_num_key_value_heads": shapes["text_fusion.layerwise_blocks.0.attn.to_k.weight"][0] // text_head_dim,
            "text_intermediate_size": shapes["text_fusion.layerwise_blocks.0.ff.gate.weight"][0],
            "num_layerwise_text_blocks": _count("text_fusion.layerwise_blocks.", shapes),
            "num_refiner_text_blocks": _count("text_fusion.refiner_blocks.", shapes),
        }
    except KeyError as e:
        raise WeightshopError(f"not a complete Krea 2 transformer: weight {e.args[0]} is missing") from None
    if head_dim == 128:
        config["axes_dims_rope"] = (32, 48, 48)
    return config


def source_shape(source) -> ModelShape:
    """The shape of a resolved `loading.ModelSource`."""
    family = source.family
    vae = read_json(source.components / "vae" / "config.json")
    return ModelShape(source.name, transformer_config(source), family.vae_scale(vae), family.patch_size,
                      source.max_sequence_length, source.default_size)


def model_shape(model: str | Path, components: str | Path | None = None, checkpoint: str | None = None,
                family: FamilySpec = KREA2) -> ModelShape:
    """The shape of a model as a user names it (directory, single file, hub id, built-in name)."""
    from weightshop.models.loading import resolve_source

    return source_shape(resolve_source(model, components, checkpoint, family))


def parameter_groups(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Parameters per top-level module (img_in, transformer_blocks, text_fusion, ...), largest first."""
    groups: dict[str, int] = {}
    for key, shape in shapes.items():
        top = original_to_diffusers_key(key).split(".")[0]
        groups[top] = groups.get(top, 0) + math.prod(shape)
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


# Qwen3-VL-4B-Instruct, Krea 2's text encoder, as its config.json has it (the sizes only): memory plans of full-size
# Krea 2 count its parameters from this without a download.
FULL_SIZE_TEXT_ENCODER = {
    "text_config": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True},
    "vision_config": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "patch_size": 16,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2560,
                      "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]},
}


def full_size_component_configs() -> tuple[dict, dict]:
    """(text encoder config, VAE config) of full-size Krea 2: Qwen3-VL-4B and the Qwen-Image VAE's defaults."""
    from diffusers import AutoencoderKLQwenImage

    return FULL_SIZE_TEXT_ENCODER, class_defaults(AutoencoderKLQwenImage)


def source_component_configs(source) -> tuple[dict, dict]:
    """(text encoder config, VAE config) of a resolved `loading.ModelSource`, from its components' config.json."""
    return (read_json(source.components / "text_encoder" / "config.json"),
            read_json(source.components / "vae" / "config.json"))
