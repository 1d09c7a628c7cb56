"""Planted faults for checking the harness itself: a checkpoint degraded on purpose, by a stated amount."""

from __future__ import annotations

import shutil
from pathlib import Path


def noisy_copy(model_dir: str | Path, out: str | Path, scale: float, seed: int = 0) -> Path:
    """A copy of a diffusers Krea 2 directory whose transformer blocks' weight matrices carry Gaussian noise of
    `scale` x each matrix's std. Saved anew, so its sha256 (and every cache key built on it) differs."""
    import torch
    from diffusers import Krea2Transformer2DModel

    out = Path(out)
    if out.exists():
        return out
    shutil.copytree(model_dir, out)
    model = Krea2Transformer2DModel.from_pretrained(out, subfolder="transformer")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("transformer_blocks.") and p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    shutil.rmtree(out / "transformer")
    model.save_pretrained(out / "transformer")
    return out
