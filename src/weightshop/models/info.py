"""Describe a Krea 2 model without loading its weights: configs and safetensors headers only.

Cheap enough to run on the 25 GB transformer: parameter counts come from tensor shapes in the headers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from weightshop.models.keys import original_to_diffusers_key
from weightshop.models.loading import (
    MANIFEST,
    _open_safetensors_keys,
    _read_json,
    infer_transformer_config,
    resolve_source,
)
from weightshop.models.spec import KREA2, FamilySpec


def _weights(files: list[Path]) -> tuple[dict[str, tuple[int, ...]], int]:
    shapes: dict[str, tuple[int, ...]] = {}
    size = 0
    for f in files:
        shapes.update(_open_safetensors_keys(f))
        size += f.stat().st_size
    return shapes, size


def describe(model: str | Path, components: str | Path | None = None, checkpoint: str | None = None,
             family: FamilySpec = KREA2) -> dict:
    source = resolve_source(model, components, checkpoint, family)
    if source.kind == "single_file":
        files = [source.transformer]
    else:
        files = sorted((source.transformer / "transformer").glob("*.safetensors"))
    shapes, nbytes = _weights(files)
    diffusers_shapes = {original_to_diffusers_key(k): v for k, v in shapes.items()}
    # The original layout stores each block's modulation table flat; the config only needs other shapes.
    config = infer_transformer_config(diffusers_shapes)
    params = sum(math.prod(s) for s in shapes.values())
    groups: dict[str, int] = {}
    for key, shape in diffusers_shapes.items():
        top = key.split(".")[0]
        groups[top] = groups.get(top, 0) + math.prod(shape)

    vae_cfg = _read_json(source.components / "vae" / "config.json")
    te_cfg = _read_json(source.components / "text_encoder" / "config.json")
    index = _read_json(source.components / "model_index.json")
    vae_scale = 2 ** len(vae_cfg.get("temperal_downsample", [False, True, True]))
    spec = family.checkpoint(source.checkpoint)
    manifest = source.manifest or _read_json(source.components / MANIFEST)
    size = int(manifest.get("default_size", 1024))
    return {
        "model": source.model_id,
        "name": manifest.get("name") or source.model_id,
        "layout": source.kind,
        "checkpoint": spec.name,
        "about": spec.about,
        "transformer_files": [str(f) for f in files],
        "transformer_bytes": nbytes,
        "transformer_parameters": params,
        "parameters_by_module": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "transformer_config": config,
        "components": str(source.components),
        "vae": {"z_dim": vae_cfg.get("z_dim"), "scale_factor": vae_scale},
        "text_encoder": {
            "layers": te_cfg.get("text_config", {}).get("num_hidden_layers"),
            "hidden_size": te_cfg.get("text_config", {}).get("hidden_size"),
            "select_layers": index.get("text_encoder_select_layers") or list(family.text_encoder_select_layers),
        },
        "size_multiple": vae_scale * family.patch_size,
        "default_size": size,
        "preset": {
            "steps": spec.preset.steps,
            "guidance": spec.preset.guidance,
            "mu": spec.preset.mu_for(size, size, vae_scale, family.patch_size, family.shift),
            "mu_rule": "fixed" if spec.preset.mu is not None else "resolution-aware",
        },
        "manifest": manifest,
    }


def to_json(info: dict) -> str:
    return json.dumps(info, indent=2, default=str)
