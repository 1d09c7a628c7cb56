"""What this machine can do for weightshop, and what is broken.

`collect()` gathers facts; `problems()` turns the facts that would stop weightshop into sentences.
A missing optional extra is reported, never a problem: the stage that needs it says so when used.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import shutil
from pathlib import Path

# (import name, distribution, what needs it)
EXTRAS = (
    ("bitsandbytes", "bitsandbytes", "8-bit AdamW and nf4 base on CUDA (training)"),
    ("gguf", "gguf", "GGUF export and import (quantization)"),
    ("prodigyopt", "prodigyopt", "Prodigy optimiser (training)"),
    ("tensorboard", "tensorboard", "TensorBoard logging (training)"),
    ("imagehash", "ImageHash", "near-duplicate detection (data check)"),
    ("rapidocr_onnxruntime", "rapidocr-onnxruntime", "watermark/text detection (data check)"),
)
DIFFUSERS_RANGE = ((0, 42, 1), (0, 43, 0))


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:
        return os.path.expanduser("~/.cache/huggingface/hub")


def collect() -> dict:
    import torch

    from weightshop.models.device import cpu_threads

    report: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "weightshop": _version("weightshop"),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        # what training and generation use on the CPU (models.loading.cpu_threads): fewer than torch's default
        "cpu_threads_used": cpu_threads(),
        "gpus": [],
    }
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        major, minor = props.major, props.minor
        report["gpus"].append({
            "index": i,
            "name": props.name,
            "vram_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{major}.{minor}",
            "bf16": bool(torch.cuda.is_bf16_supported()),
            # fp8 matmuls (torch._scaled_mm) need Ada (8.9) or Hopper (9.0) and newer.
            "fp8": (major, minor) >= (8, 9),
        })
    report["cpu_bf16"] = _cpu_bf16_works()
    for name in ("diffusers", "transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        report[name] = _version(name)
    report["krea2_in_diffusers"] = _has_krea2()
    report["torchvision_installed"] = _version("torchvision") is not None
    # PyPI's torchvision is a CUDA build that fails beside the CPU torch; libraries that find it import it.
    report["torchvision_works"] = _importable("torchvision") if report["torchvision_installed"] else None
    cache = hf_cache_dir()
    report["hf_cache"] = cache
    probe = Path(cache)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    report["free_disk_gib"] = round(shutil.disk_usage(probe).free / 2**30, 1)
    report["extras"] = {
        name: {"installed": _importable(name), "version": _version(dist), "for": why}
        for name, dist, why in EXTRAS
    }
    return report


def _cpu_bf16_works() -> bool:
    import torch

    try:
        a = torch.ones(4, 4, dtype=torch.bfloat16)
        return bool((a @ a).float().sum().item() == 64.0)
    except Exception:
        return False


def _has_krea2() -> bool:
    try:
        diffusers = importlib.import_module("diffusers")
        return all(hasattr(diffusers, n) for n in ("Krea2Pipeline", "Krea2Transformer2DModel",
                                                     "AutoencoderKLQwenImage"))
    except Exception:
        return False


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


def problems(report: dict) -> list[str]:
    """The facts that stop weightshop from working, as sentences that say what to do."""
    found = []
    diffusers = report.get("diffusers")
    if diffusers is None:
        found.append("diffusers is not installed: pip install 'diffusers>=0.42.1,<0.43'")
    else:
        low, high = DIFFUSERS_RANGE
        if not (low <= _tuple(diffusers) < high):
            found.append(f"diffusers {diffusers} is outside the supported range >=0.42.1,<0.43 "
                         "(Krea 2's pipeline and its pitfalls are pinned to 0.42.x)")
        if not report.get("krea2_in_diffusers"):
            found.append("this diffusers has no Krea2Pipeline / Krea2Transformer2DModel / AutoencoderKLQwenImage")
    for name in ("transformers", "peft", "accelerate", "safetensors", "tokenizers"):
        if report.get(name) is None:
            found.append(f"{name} is not installed (pip install -e . installs it)")
    if report.get("torchvision_installed") and not report.get("torchvision_works"):
        found.append("torchvision is installed but fails to import beside this torch, and libraries that "
                     "find it will try to import it: pip uninstall torchvision (weightshop never needs it)")
    if report.get("free_disk_gib", 1e9) < 1:
        found.append(f"less than 1 GiB free in {report.get('hf_cache')}")
    return found
