"""Apply LoRA files to a Krea 2 pipeline and prove every tensor landed.

diffusers' load_lora_weights loads `lora_unet_*`, `model.diffusion_model.*` and bare names as a silent
no-op (a warning, zero modules changed): the "LoRA does nothing in ComfyUI" complaint in reverse. Here a
LoRA that does not inject every one of its modules is an error that says which ones were left over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from weightshop.errors import WeightshopError

_A_KEY = re.compile(r"^(?P<module>.+?)\.(lora_A|lora_down)(\.[\w-]+)?\.weight$")


@dataclass(frozen=True)
class LoraRequest:
    path: Path
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraRequest":
        """`path` or `path:strength` (the form the CLI takes)."""
        path, _, strength = text.rpartition(":") if re.search(r":-?[\d.]+$", text) else (text, "", "")
        try:
            return cls(Path(path), float(strength) if strength else 1.0)
        except ValueError:
            raise WeightshopError(f"bad LoRA strength in {text!r}: expected PATH or PATH:STRENGTH, e.g. style.safetensors:0.8") from None


@dataclass(frozen=True)
class AppliedLora:
    name: str
    path: str
    sha256: str
    strength: float
    modules: int

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "strength": self.strength,
                "modules": self.modules}


def read_lora_file(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a LoRA safetensors file, with clear errors for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightshopError(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors":
        raise WeightshopError(f"LoRA file {path} is not .safetensors: weightshop never unpickles .bin/.pt/.ckpt")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:
        raise WeightshopError(f"LoRA file {path} is not a readable safetensors file ({e}); is it truncated?") from None


def lora_modules(keys) -> set[str]:
    """Module names a LoRA file adapts (one per lora_A / lora_down tensor)."""
    return {m.group("module") for k in keys if (m := _A_KEY.match(k))}


def _injected(transformer, adapter: str) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(1 for m in transformer.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A)


def apply_loras(pipeline, loras: list[LoraRequest]) -> list[AppliedLora]:
    """Load each LoRA as its own adapter, verify injection, and activate them at their strengths."""
    from weightshop.io import cached_sha256

    applied = []
    for i, lora in enumerate(loras):
        tensors, _ = read_lora_file(lora.path)
        modules = lora_modules(tensors)
        if not modules:
            raise WeightshopError(f"LoRA file {lora.path} has no lora_A/lora_B (or lora_down/lora_up) tensors")
        if any(".lora_down." in k or k.startswith("lora_unet_") for k in tensors):
            raise WeightshopError(
                f"LoRA file {lora.path} is in kohya/musubi layout (lora_down/lora_up/alpha), which diffusers "
                "cannot load: convert it to the diffusers/peft layout first"
            )
        name = f"lora{i}_{re.sub(r'[^A-Za-z0-9_]', '_', lora.path.stem)}"
        try:
            pipeline.load_lora_weights(str(lora.path), adapter_name=name)
        except (ValueError, RuntimeError, KeyError) as e:
            raise WeightshopError(f"LoRA file {lora.path} does not fit this model: {e}") from None
        injected = _injected(pipeline.transformer, name)
        if injected != len(modules):
            if injected:
                pipeline.delete_adapters(name)
            raise WeightshopError(
                f"LoRA file {lora.path}: only {injected} of its {len(modules)} modules matched this Krea 2 "
                f"transformer (e.g. {sorted(modules)[0]}); weightshop refuses a partial or silent no-op load"
            )
        applied.append(AppliedLora(name, str(lora.path), cached_sha256(lora.path), lora.strength, injected))
    if applied:
        pipeline.set_adapters([a.name for a in applied], adapter_weights=[a.strength for a in applied])
    return applied
