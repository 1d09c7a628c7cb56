"""Apply LoRA files to a Krea 2 pipeline and prove every tensor landed.

Every loading path goes through `apply_loras`: the file is read in whatever layout it ships in
(diffusers, ComfyUI, ai-toolkit, kohya/musubi; see weightshop.lora.formats), converted to the canonical
form, checked against the transformer's Linear shapes, and handed to diffusers as a peft state dict with
alpha folded in. diffusers on its own loads `lora_unet_*`, `model.diffusion_model.*` and bare names as a
silent no-op (a warning, zero modules changed); here every module of the file must be injected, or the
load is an error that names what was left over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.lora.files import read_lora_file
from weightshop.lora.formats import diffusers_state_dict, fit_problems, linear_shapes, load_canonical

__all__ = ["AppliedLora", "LoraRequest", "apply_loras", "read_lora_file"]


@dataclass(frozen=True)
class LoraRequest:
    path: Path
    strength: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def parse(cls, text: str) -> "LoraRequest":
        """`PATH[:STRENGTH]` (the form the CLI takes), STRENGTH a number; 1.0 when none is written.

        The text after the last ':' is the strength when it is a number. Otherwise the whole text is the
        path when that file exists or the part after ':' looks like a path (a separator or a file
        extension: `C:\\loras\\a.safetensors`, `F:a.safetensors`); anything else (`F:abc`, `a.safetensors:x`)
        is a bad strength, named as such.
        """
        return cls.parse_spec(text)[0]

    @classmethod
    def parse_spec(cls, text: str) -> tuple["LoraRequest", bool]:
        """(request, whether a strength was written)."""
        import math

        head, sep, tail = text.rpartition(":")
        if not sep:
            return cls(Path(text)), False
        try:
            strength = float(tail)
        except ValueError:
            strength = None
        if strength is not None and not (Path(text).is_file() and not Path(head).exists()):
            if not math.isfinite(strength):
                raise WeightshopError(f"bad LoRA strength {tail!r} in {text!r}: STRENGTH must be a finite number")
            if not head:
                raise WeightshopError(f"no LoRA file before the strength in {text!r}: expected PATH[:STRENGTH]")
            return cls(Path(head), strength), True
        if strength is not None or Path(text).exists() or re.search(r"[/\\]|\.[A-Za-z]\w*$", tail):
            return cls(Path(text)), False
        raise WeightshopError(f"bad LoRA strength {tail!r} in {text!r}: expected PATH[:STRENGTH] with STRENGTH a "
                              "number, e.g. style.safetensors:0.8 (and no file named "
                              f"{text!r} exists)")


@dataclass(frozen=True)
class AppliedLora:
    name: str
    path: str
    sha256: str
    strength: float
    modules: int
    format: str = "diffusers"

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "strength": self.strength,
                "modules": self.modules, "format": self.format}


def injected_modules(transformer, adapter: str) -> set[str]:
    """Names of the modules of `transformer` that carry adapter `adapter`."""
    from peft.tuners.lora import LoraLayer

    return {name for name, m in transformer.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


def apply_loras(pipeline, loras: list[LoraRequest]) -> list[AppliedLora]:
    """Load each LoRA as its own adapter, verify injection module by module, and activate them at their strengths."""
    from weightshop.io import cached_sha256

    transformer = pipeline.transformer
    applied = []
    for i, lora in enumerate(loras):
        canon = load_canonical(lora.path)
        problems = fit_problems(canon, linear_shapes(transformer))
        if problems:
            raise WeightshopError(
                f"LoRA file {lora.path} does not fit this Krea 2 transformer ({len(problems)} of its "
                f"{len(canon.modules)} modules): " + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
                + ". Is it a LoRA for another model or model size?"
            )
        name = f"lora{i}_{re.sub(r'[^A-Za-z0-9_]', '_', lora.path.stem)}"
        if name in (pipeline.get_list_adapters().get("transformer") or []):
            pipeline.delete_adapters(name)  # the same file applied again to this pipeline: replace it
        try:
            pipeline.load_lora_weights(diffusers_state_dict(canon), adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as e:
            raise WeightshopError(f"LoRA file {lora.path} does not fit this model: {e}") from None
        injected = injected_modules(transformer, name)
        if injected != set(canon.modules):
            if injected:
                pipeline.delete_adapters(name)
            left = sorted(set(canon.modules) - injected)
            raise WeightshopError(
                f"LoRA file {lora.path}: only {len(injected)} of its {len(canon.modules)} modules matched this "
                f"Krea 2 transformer (not injected: {', '.join(left[:3])}); weightshop refuses a partial or "
                "silent no-op load"
            )
        applied.append(AppliedLora(name, str(lora.path), cached_sha256(lora.path), lora.strength, len(injected),
                                   canon.format))
    if applied:
        pipeline.set_adapters([a.name for a in applied], adapter_weights=[a.strength for a in applied])
    return applied
