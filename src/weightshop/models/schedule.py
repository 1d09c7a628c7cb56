"""Krea 2's flow-matching schedule as pure functions.

Krea 2 interpolates x_t = (1 - s) * x0 + s * noise with s in [0, 1] (1 is pure noise) and predicts
v = noise - x0. Sampling walks a grid of sigmas from 1 towards 0, shifted towards the noisy end by the
exponential time shift e^mu / (e^mu + 1/s - 1). Raw picks mu from the number of image tokens (a `ShiftRule`),
Turbo uses a fixed mu. The functions are here, once; the numbers that are facts of a checkpoint (Krea 2's
shift anchors, Turbo's mu) live on the family spec in weightshop.models.spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShiftRule:
    """mu as a linear function of image tokens, between two anchor points (Krea 2's: models.spec.KREA2.shift)."""

    base_tokens: int
    max_tokens: int
    base_mu: float
    max_mu: float

    def mu(self, image_tokens: int) -> float:
        slope = (self.max_mu - self.base_mu) / (self.max_tokens - self.base_tokens)
        return self.base_mu + slope * (image_tokens - self.base_tokens)


def image_tokens(height: int, width: int, vae_scale_factor: int = 8, patch_size: int = 2) -> int:
    """Number of image tokens the transformer sees for an image of height x width pixels."""
    step = vae_scale_factor * patch_size
    return (height // step) * (width // step)


def time_shift(mu: float, s: np.ndarray | float) -> np.ndarray | float:
    """Exponential time shift: pushes s towards 1 (noise) for mu > 0. Identity at mu = 0."""
    s = np.asarray(s, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = math.exp(mu) / (math.exp(mu) + 1.0 / s - 1.0)
    return np.where(s <= 0.0, 0.0, out)


def base_sigmas(steps: int) -> np.ndarray:
    """The unshifted grid Krea 2 samples on: linspace(1, 1/N, N)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.linspace(1.0, 1.0 / steps, steps)


def sampling_sigmas(steps: int, mu: float) -> np.ndarray:
    """The N + 1 sigmas an Euler sampler visits, shifted by mu and ending at 0."""
    return np.append(time_shift(mu, base_sigmas(steps)), 0.0)


def static_shift_for_mu(mu: float) -> float:
    """The scheduler `shift` that reproduces the exponential shift at a fixed mu.

    shift * s / (1 + (shift - 1) * s) == e^mu / (e^mu + 1/s - 1) exactly when shift = e^mu, which lets a
    user pin mu on diffusers' scheduler, whose pipeline call has no mu argument.
    """
    return math.exp(mu)


def euler_step(x: np.ndarray, v: np.ndarray, s: float, s_next: float) -> np.ndarray:
    """One Euler step of the flow ODE: x <- x + (s_next - s) * v."""
    return x + (s_next - s) * v


def noisy_sample(x0, noise, s):
    """x_t = (1 - s) x0 + s noise (works on numpy arrays and torch tensors alike; s broadcasts)."""
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0, noise):
    """The regression target of Krea 2's objective: v = noise - x0."""
    return noise - x0


def sample_timesteps(n: int, kind: str = "logit_normal", *, generator=None, mean: float = 0.0, std: float = 1.0,
                     mu: float | None = None):
    """Training timesteps s in (0, 1) for Krea 2's objective.

    uniform: s ~ U(0, 1); logit_normal: s = sigmoid(N(mean, std)), which concentrates training on the
    middle of the path where the velocity is hardest to predict; shifted: uniform pushed through the
    same time shift as inference at `mu`, so training visits timesteps in the proportion sampling does.
    """
    import torch

    if kind == "uniform":
        s = torch.rand(n, generator=generator)
    elif kind == "logit_normal":
        s = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    elif kind == "shifted":
        if mu is None:
            raise ValueError("the shifted timestep sampler needs mu")
        u = torch.rand(n, generator=generator)
        s = math.exp(mu) / (math.exp(mu) + 1.0 / u.clamp_min(1e-6) - 1.0)
    else:
        raise ValueError(f"unknown timestep sampler {kind!r}: expected uniform, logit_normal or shifted")
    return s.clamp(1e-4, 1.0 - 1e-4)


LOSS_WEIGHTINGS = ("none", "cosmap", "min_snr")


def loss_weights(s, kind: str = "none", *, gamma: float = 5.0):
    """Per-sample weights of the velocity loss ||v_pred - v||^2 at timesteps s (numpy or torch alike).

    none: 1, Krea 2's objective as it is; where training spends its effort is then set by the timestep sampler
    alone (weighting by w(s) under a sampler of density p(s) trains like sampling from a density proportional to
    p(s) w(s), with noisier gradients). cosmap: 2 / (pi (1 - 2s + 2s^2)), the density of SD3's cosine-map sampler
    used as a weight (peak 4/pi at s = 1/2, 2/pi at the ends). min_snr: Min-SNR-gamma for this objective. With
    x0 = x_t - s v, the x0 error is s times the velocity error, and SNR(s) = ((1 - s) / s)^2, so weighting the x0
    loss by min(SNR, gamma) weights the velocity loss by min((1 - s)^2, gamma s^2); divided by its peak
    gamma / (1 + sqrt(gamma))^2 (at s = 1 / (1 + sqrt(gamma))) so the weights lie in (0, 1]. It takes weight off
    the nearly clean end (s -> 0), where a small velocity error hardly changes the image, and off pure noise.
    """
    if kind == "none":
        return s * 0 + 1.0
    if kind == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * s + 2.0 * s * s))
    if kind == "min_snr":
        if gamma <= 0:
            raise ValueError(f"min_snr needs gamma > 0, got {gamma}")
        peak = gamma / (1.0 + math.sqrt(gamma)) ** 2
        low, high = (1.0 - s) ** 2, gamma * s * s
        # min(low, high), exact for floats, arrays and tensors alike ((a + b - |a - b|) / 2 cancels in float32)
        return (low * (low <= high) + high * (high < low)) / peak
    raise ValueError(f"unknown loss weighting {kind!r}: expected one of {', '.join(LOSS_WEIGHTINGS)}")
