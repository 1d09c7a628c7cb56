"""Reading and writing LoRA safetensors files, with errors that say what is wrong with a bad one.

A LoRA that fails to load usually fails for a boring reason: the download stopped early, the file is
a pickled `.pt` renamed to `.safetensors`, or it is not a LoRA at all. Each of these gets its own
message naming the file and the fact that gave it away, before any tensor is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_bytes


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (None when its header and size agree)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = None
        if 0 <= n <= size - 8:
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
    if header is None:
        # Not a safetensors header: say what it is when the first bytes tell.
        if head[:2] == b"PK":
            return "is a zip archive (a torch.save / PyTorch checkpoint), not safetensors; weightshop never unpickles"
        if head[:1] == b"\x80":
            return "is a Python pickle, not safetensors; weightshop never unpickles"
        if n < 0:
            return f"is only {size} bytes long: empty or truncated"
        if n > size - 8:
            return f"is truncated or not safetensors: its header claims {n} bytes but the file has {size}"
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        return "is not a safetensors file (a header entry has no data_offsets)"
    if 8 + n + end > size:
        return f"is truncated: its tensors need {8 + n + end} bytes but the file has {size} (download it again)"
    return None


def check_lora_file(path: str | Path) -> str:
    """Check a LoRA file from its header alone, before anything heavy is loaded; returns its layout.

    It must exist, be a complete safetensors file (not a pickle, not truncated) and hold LoRA tensors
    (lora_A/lora_B or lora_down/lora_up). No tensor is read: the full read and the per-module checks come
    when it is applied (`read_lora_file`, `formats.to_canonical`).
    """
    return _read(path, tensors=False)[0]


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA safetensors file, with clear errors for anything else."""
    return _read(path, tensors=True)[1:]


def _read(path: str | Path, tensors: bool) -> tuple[str | None, dict[str, torch.Tensor], dict[str, str]]:
    """(layout, tensors, metadata): every check up to the header, then the tensors when asked."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightshopError(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors":
        raise WeightshopError(f"LoRA file {path} is not .safetensors: weightshop never unpickles .bin/.pt/.ckpt")
    problem = safetensors_problem(path)
    if problem:
        raise WeightshopError(f"LoRA file {path} {problem}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys, metadata = list(f.keys()), dict(f.metadata() or {})
            if tensors:
                return None, {k: f.get_tensor(k) for k in keys}, metadata
    except Exception as e:
        raise WeightshopError(f"LoRA file {path} is not a readable safetensors file ({e}); is it truncated?") from None
    from weightshop.lora.formats import detect_format, no_lora_tensors

    layout = detect_format(keys, metadata)
    if layout is None:  # the same error to_canonical gives once the tensors are read
        raise no_lora_tensors(path, keys)
    return layout, {}, metadata


def write_lora_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically (readers see the old file or the whole new one)."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightshopError(f"output {path} must end in .safetensors (weightshop writes only safetensors)")
    bad = {k: v for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise WeightshopError(f"safetensors metadata values must be strings; got {sorted(bad)[:3]}")
    data = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)
