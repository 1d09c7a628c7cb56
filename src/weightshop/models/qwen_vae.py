"""An exact fast path for Krea 2's VAE (AutoencoderKLQwenImage) on single images.

The Qwen VAE is a video VAE: every convolution is a causal 3D convolution that pads time with zeros
before the frame. For one frame with no cache, only the kernel's last time slice ever meets real data,
so a 2D convolution with that slice gives the same output at about half the cost on CPU. weightshop
always decodes and encodes single frames, so every pipeline it builds uses this path.
"""

from __future__ import annotations

import types

import torch.nn.functional as F


def _single_frame_conv(self, x, cache_x=None):
    if x.shape[2] != 1 or cache_x is not None:
        return self._weightshop_conv3d(x, cache_x)
    pad_w, pad_h = self._padding[0], self._padding[2]
    out = F.conv2d(x[:, :, 0], self.weight[:, :, -1], self.bias, stride=self.stride[1:], padding=(pad_h, pad_w))
    return out.unsqueeze(2)


def use_single_frame_convs(vae) -> int:
    """Route every causal 3D conv of a Qwen VAE through the exact 2D path for single frames (idempotent)."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

    count = 0
    for module in vae.modules():
        if isinstance(module, QwenImageCausalConv3d) and not hasattr(module, "_weightshop_conv3d"):
            module._weightshop_conv3d = module.forward
            module.forward = types.MethodType(_single_frame_conv, module)
            count += 1
    return count
