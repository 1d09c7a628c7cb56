"""Fast paths for Krea 2's VAE (AutoencoderKLQwenImage) on single images, and a way to switch them off.

The Qwen VAE is a video VAE. Two of its parts cost far more than they need to when it codes one image:

- every convolution is a causal 3D convolution that pads time with zeros before the frame. For one frame with
  no cache, only the kernel's last time slice ever meets real data, so a 2D convolution with that slice gives
  the same output (exact) at about half the cost on CPU.
- its RMS norm normalises over channels with `F.normalize(x, dim=1)`, whose CPU reduction over a non-innermost
  dimension is slow (about 15x a plain sum of squares on (1, 16, 1, 64, 64)). On the CPU the norm is computed as
  `x / sqrt(sum(x^2))` instead: the same formula, summed in another order (within 1e-6). CUDA keeps the library's
  call: its kernel is fast there and the sum of squares would hold a full-size temporary at 1024 px.

weightshop always decodes and encodes single frames, so every pipeline it builds uses these paths
(`use_fast_paths`); `as_shipped` restores diffusers' own forwards for a while (the generation bench times stock
diffusers as it ships).
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

_ORIGINAL = "_weightshop_original_forward"


def _single_frame_conv(self, x, cache_x=None):
    if x.shape[2] != 1 or cache_x is not None:
        return getattr(self, _ORIGINAL)(x, cache_x)
    pad_w, pad_h = self._padding[0], self._padding[2]
    out = F.conv2d(x[:, :, 0], self.weight[:, :, -1], self.bias, stride=self.stride[1:], padding=(pad_h, pad_w))
    return out.unsqueeze(2)


def _needs_fp32(dtype: torch.dtype) -> bool:
    """The dtypes the library's norm upcasts before normalising (half precisions and the float8 / float4 kinds)."""
    return dtype in (torch.float16, torch.bfloat16) or any(t in str(dtype) for t in ("float4_", "float8_"))


def _rms_norm(self, x):
    if x.device.type != "cpu":
        return getattr(self, _ORIGINAL)(x)
    y = x.float() if _needs_fp32(x.dtype) else x
    dim = 1 if self.channel_first else -1
    normalized = (y / y.square().sum(dim, keepdim=True).sqrt().clamp_min(1e-12)).to(x.dtype)  # F.normalize's eps
    return normalized * self.scale * self.gamma + self.bias


def _patchable(vae):
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d, QwenImageRMS_norm

    for module in vae.modules():
        if isinstance(module, QwenImageCausalConv3d):
            yield module, _single_frame_conv
        elif isinstance(module, QwenImageRMS_norm):
            yield module, _rms_norm


def use_fast_paths(vae) -> int:
    """Route a Qwen VAE's causal convolutions and RMS norms through the fast paths (idempotent); returns how many
    modules changed."""
    count = 0
    for module, forward in _patchable(vae):
        if not hasattr(module, _ORIGINAL):
            setattr(module, _ORIGINAL, module.forward)
            module.forward = types.MethodType(forward, module)
            count += 1
    return count


@contextlib.contextmanager
def as_shipped(vae):
    """diffusers' own VAE forwards inside the block, weightshop's fast paths again after it."""
    patched = [module for module, _ in _patchable(vae) if hasattr(module, _ORIGINAL)]
    saved = [module.forward for module in patched]
    for module in patched:
        module.forward = getattr(module, _ORIGINAL)
    try:
        yield vae
    finally:
        for module, forward in zip(patched, saved):
            module.forward = forward
