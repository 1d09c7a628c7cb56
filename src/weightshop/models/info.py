"""Describe a Krea 2 model without loading its weights: configs and safetensors headers only.

Cheap enough to run on the 25 GB transformer: parameter counts come from tensor shapes in the headers. A quantized
file (ComfyUI comfy_quant / fp8_scaled, GGUF) is described from its header too, with a `quantization` section.
"""

from __future__ import annotations

import math
from pathlib import Path

from weightshop.io import read_json
from weightshop.models.loading import MODEL_DEFAULTS, resolve_source
from weightshop.models.shape import file_shapes, parameter_groups, source_shape, weight_files
from weightshop.models.spec import KREA2, FamilySpec


def describe(model: str | Path, components: str | Path | None = None, checkpoint: str | None = None,
             family: FamilySpec = KREA2) -> dict:
    source = resolve_source(model, components, checkpoint, family)
    files = weight_files(source)
    headers: dict[str, tuple[int, ...]] = {}
    for f in files:
        headers.update(file_shapes(f))
    quantization = None
    if source.kind == "single_file":
        from weightshop.models.quantized import describe_quantized, is_quantized_file
        from weightshop.quant.comfy import is_side_tensor

        if is_quantized_file(source.transformer):
            quantization = describe_quantized(source.transformer)
            # scales and per-layer markers are not parameters
            headers = {k: v for k, v in headers.items() if not is_side_tensor(k)}
    shape = source_shape(source)
    te_cfg = read_json(source.components / "text_encoder" / "config.json")
    index = read_json(source.components / "model_index.json")
    spec = family.checkpoint(source.checkpoint)
    size = shape.default_size
    return {
        "model": source.model_id,
        "name": source.name,
        "layout": source.kind,
        "checkpoint": spec.name,
        "about": spec.about,
        "transformer_files": [str(f) for f in files],
        "transformer_bytes": sum(f.stat().st_size for f in files),
        "transformer_parameters": sum(math.prod(s) for s in headers.values()),
        "parameters_by_module": parameter_groups(headers),
        "transformer_config": shape.config,
        "components": str(source.components),
        "vae": {"z_dim": read_json(source.components / "vae" / "config.json").get("z_dim"),
                "scale_factor": shape.vae_scale_factor},
        "text_encoder": {
            "layers": te_cfg.get("text_config", {}).get("num_hidden_layers"),
            "hidden_size": te_cfg.get("text_config", {}).get("hidden_size"),
            "select_layers": index.get("text_encoder_select_layers") or list(family.text_encoder_select_layers),
        },
        "size_multiple": shape.size_multiple,
        "default_size": size,
        "max_sequence_length": shape.max_sequence_length,
        "preset": {
            "steps": spec.preset.steps,
            "guidance": spec.preset.guidance,
            "mu": spec.preset.mu_for(size, size, shape.vae_scale_factor, family.patch_size, family.shift),
            "mu_rule": "fixed" if spec.preset.mu is not None else "resolution-aware",
        },
        "defaults": source.defaults or read_json(source.components / MODEL_DEFAULTS),
        # a quantized file (comfy_quant, fp8_scaled, GGUF): container, layers per format, kept layers, bytes and
        # the bf16 size it replaces (models.quantized.describe_quantized); None for bf16/fp32 weights
        "quantization": quantization,
    }
