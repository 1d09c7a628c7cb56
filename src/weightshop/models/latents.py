"""Krea 2's latent layout as pure functions: 2x2 patch packing and the rotary coordinates.

Krea2Pipeline does the same inside instance methods; training and caching need them without building a
pipeline, so they live here once, and tests check them against the pipeline's own methods.
"""

from __future__ import annotations

import torch


def pack_latents(latents: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/p * w/p, C * p * p) tokens, channel-major within each patch."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack_latents(tokens: torch.Tensor, h: int, w: int, patch: int = 2) -> torch.Tensor:
    """Inverse of pack_latents for latent size h x w."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.view(b, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def position_ids(text_len: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """(text_len + grid_h * grid_w, 3) coordinates: text at the origin, image tokens at (0, row, col)."""
    image = torch.zeros(grid_h, grid_w, 3, device=device)
    image[..., 1] = torch.arange(grid_h, device=device)[:, None]
    image[..., 2] = torch.arange(grid_w, device=device)[None, :]
    return torch.cat([torch.zeros(text_len, 3, device=device), image.reshape(-1, 3)])
