"""A base model's transformer weights by diffusers name, read lazily from its safetensors files.

LoRA operations touch a model's Linear weights one at a time (fit checks read only shapes, extraction
reads two models side by side), so nothing here loads a whole 25 GB transformer into memory: tensors
are read on demand from the diffusers shards or the official single file (original names mapped through
weightshop.models.keys).
"""

from __future__ import annotations

from pathlib import Path

import torch

from weightshop.models.keys import is_original_layout, original_to_diffusers_key
from weightshop.io import safetensors_shapes
from weightshop.models.loading import ModelSource, resolve_source
from weightshop.models.shape import weight_files


class TransformerWeights:
    """Read-only view of one Krea 2 transformer's weights: diffusers key -> tensor, loaded on demand."""

    def __init__(self, model: str | Path, components: str | Path | None = None, checkpoint: str | None = None):
        self.source: ModelSource = resolve_source(model, components, checkpoint)
        self.files = weight_files(self.source)
        self.original = False
        self._where: dict[str, tuple[Path, str]] = {}  # diffusers key -> (file, key in that file)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in self.files:
            keys = safetensors_shapes(file)
            original = is_original_layout(keys) if self.source.kind == "single_file" else False
            self.original |= original
            for key, shape in keys.items():
                name = original_to_diffusers_key(key) if original else key
                self._where[name] = (file, key)
                self.shapes[name] = shape
        self._handles: dict[Path, object] = {}

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        file, stored = self._where[key]
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file].get_tensor(stored)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of every Krea 2 Linear layer of this transformer, by module name."""
        from weightshop.lora.formats import to_diffusers_module

        shapes = {}
        for key, shape in self.shapes.items():
            module = key.removesuffix(".weight")
            if key.endswith(".weight") and len(shape) == 2 and to_diffusers_module(module) == module:
                shapes[module] = tuple(shape)
        return shapes


def model_linear_shapes(model: str | Path, components: str | Path | None = None) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear of a model's transformer, from safetensors headers only."""
    return TransformerWeights(model, components).linear_shapes()
