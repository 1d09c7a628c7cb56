"""Krea 2's schedule: mu anchors from KREA2.md, the shift, and the sigmas diffusers actually samples on."""

import math

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from weightshop.models.schedule import (
    base_sigmas,
    euler_step,
    image_tokens,
    noisy_sample,
    sampling_sigmas,
    static_shift_for_mu,
    time_shift,
    velocity_target,
)
from weightshop.models.spec import KREA2, KREA2_SHIFT, RAW, TURBO


@pytest.mark.parametrize("tokens, mu", [(256, 0.5), (4096, 0.90625), (6400, 1.15)])
def test_mu_anchor_points(tokens, mu):
    assert KREA2_SHIFT.mu(tokens) == pytest.approx(mu, abs=1e-9)


def test_image_tokens_at_1024_is_4096_and_raw_mu_is_0906():
    assert image_tokens(1024, 1024) == 4096
    assert RAW.preset.mu_for(1024, 1024) == pytest.approx(0.906, abs=5e-4)
    assert image_tokens(256, 256) == 256 and RAW.preset.mu_for(256, 256) == pytest.approx(0.5)


@pytest.mark.parametrize("side", [256, 512, 1024, 1280, 2048])
def test_turbo_mu_is_fixed(side):
    assert TURBO.preset.mu_for(side, side) == TURBO.preset.mu == 1.15


def test_presets_match_the_release():
    assert (RAW.preset.steps, RAW.preset.guidance, RAW.is_distilled) == (52, 3.5, False)
    assert (TURBO.preset.steps, TURBO.preset.guidance, TURBO.is_distilled) == (8, 0.0, True)


def test_time_shift_properties():
    s = np.linspace(0.01, 1.0, 50)
    assert np.allclose(time_shift(0.0, s), s)
    shifted = time_shift(1.15, s)
    assert np.all(shifted >= s) and shifted[-1] == pytest.approx(1.0)
    assert np.all(np.diff(shifted) > 0)
    # closed form at one point: e^mu / (e^mu + 1/s - 1)
    assert time_shift(0.7, 0.5) == pytest.approx(math.exp(0.7) / (math.exp(0.7) + 1.0))


def test_static_shift_equals_exponential_shift():
    s = np.linspace(0.02, 1.0, 40)
    for mu in (0.3, 0.906, 1.15):
        shift = static_shift_for_mu(mu)
        assert np.allclose(shift * s / (1 + (shift - 1) * s), time_shift(mu, s), atol=1e-12)


def test_sampling_sigmas_shape_and_ends():
    sig = sampling_sigmas(8, 1.15)
    assert len(sig) == 9 and sig[0] == pytest.approx(1.0) and sig[-1] == 0.0
    assert np.all(np.diff(sig) < 0)
    assert np.allclose(base_sigmas(4), [1.0, 0.75, 0.5, 0.25])


@pytest.mark.parametrize("tokens", [256, 1024, 4096, 6400])
def test_diffusers_scheduler_with_weightshop_config_gives_krea_sigmas(tokens):
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(KREA2.scheduler_config())
    mu = KREA2_SHIFT.mu(tokens)
    scheduler.set_timesteps(sigmas=base_sigmas(52), mu=mu)
    assert np.allclose(scheduler.sigmas.numpy(), sampling_sigmas(52, mu), atol=1e-6)


def test_pinned_mu_config_reproduces_the_shift():
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(KREA2.scheduler_config(mu=1.15))
    scheduler.set_timesteps(sigmas=base_sigmas(8), mu=0.123)  # the pipeline's mu is ignored when pinned
    assert np.allclose(scheduler.sigmas.numpy(), sampling_sigmas(8, 1.15), atol=1e-6)


def test_diffusers_default_scheduler_would_be_wrong():
    """The pitfall weightshop's config exists for: without max_image_seq_len the anchor is 4096, not 6400."""
    default = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    assert default.config.max_image_seq_len == 4096


def test_flow_objective_and_euler_step_are_consistent():
    rng = np.random.default_rng(0)
    x0, noise = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    v = velocity_target(x0, noise)
    xt = noisy_sample(x0, noise, 0.3)
    # With the exact velocity, one Euler step along the straight path lands exactly on x_s'.
    assert np.allclose(euler_step(xt, v, 0.3, 0.1), noisy_sample(x0, noise, 0.1))
    assert np.allclose(euler_step(noise, v, 1.0, 0.0), x0)


def test_timestep_samplers():
    import torch

    from weightshop.models.schedule import sample_timesteps

    g = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(20000, "uniform", generator=g)
    logit = sample_timesteps(20000, "logit_normal", generator=g)
    shifted = sample_timesteps(20000, "shifted", generator=g, mu=1.15)
    for s in (uniform, logit, shifted):
        assert s.min() > 0 and s.max() < 1
    assert abs(uniform.mean().item() - 0.5) < 0.01
    assert abs(logit.median().item() - 0.5) < 0.02 and logit.std() < uniform.std()
    # the shifted sampler follows the inference shift: P(s <= time_shift(mu, u)) = u
    assert abs((shifted <= float(time_shift(1.15, 0.5))).float().mean().item() - 0.5) < 0.01
    assert abs(sample_timesteps(20000, "logit_normal", generator=g, mean=1.0).median().item()
               - 1 / (1 + math.exp(-1.0))) < 0.02
    with pytest.raises(ValueError, match="needs mu"):
        sample_timesteps(4, "shifted")
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        sample_timesteps(4, "cosine")


def test_latent_packing_and_positions_match_the_pipeline(tiny_raw):
    import torch

    from weightshop.models.latents import pack_latents, position_ids, unpack_latents

    pipe = tiny_raw.pipeline
    z = torch.randn(2, 4, 8, 12)
    packed = pack_latents(z)
    assert torch.equal(packed, pipe._pack_latents(z, 2, 4, 8, 12))
    assert torch.equal(unpack_latents(packed, 8, 12), z)
    assert torch.equal(pipe._unpack_latents(packed, 8 * 4, 12 * 4)[:, :, 0], z)  # f4 VAE: pixels = 4 x latent
    assert torch.equal(position_ids(5, 4, 6), pipe.prepare_position_ids(5, 4, 6, torch.device("cpu")))


def test_loss_weightings():
    import torch

    from weightshop.models.schedule import loss_weights

    s = np.linspace(0.001, 0.999, 999)
    assert np.array_equal(loss_weights(s, "none"), np.ones_like(s))
    # cosmap is SD3's cosine-map density used as a weight: 4/pi at the middle, 2/pi at the ends, integrates to 1
    cos = loss_weights(s, "cosmap")
    assert cos[499] == pytest.approx(4 / math.pi) and loss_weights(0.0, "cosmap") == pytest.approx(2 / math.pi)
    assert np.trapezoid(cos, s) == pytest.approx(1.0, abs=3e-3)
    # min-SNR-gamma: weighting the velocity loss by w(s) is weighting the x0 loss by min(SNR, gamma) / peak
    gamma = 5.0
    rng = np.random.default_rng(0)
    x0, noise, v_pred = rng.normal(size=(3, 16))
    for si in (0.02, 0.2, 1 / (1 + math.sqrt(gamma)), 0.5, 0.9):
        xt = noisy_sample(x0, noise, si)
        v_loss = np.sum((v_pred - velocity_target(x0, noise)) ** 2)
        x0_loss = np.sum((xt - si * v_pred - x0) ** 2)  # x0 predicted from the velocity
        snr = ((1 - si) / si) ** 2
        peak = gamma / (1 + math.sqrt(gamma)) ** 2
        assert loss_weights(si, "min_snr", gamma=gamma) * v_loss == pytest.approx(min(snr, gamma) * x0_loss / peak)
    w = loss_weights(s, "min_snr", gamma=gamma)
    assert w.max() == pytest.approx(1.0, abs=1e-3) and w.max() <= 1 and abs(s[w.argmax()] - 1 / (1 + math.sqrt(gamma))) < 2e-3
    assert w[0] < 0.01 and w[-1] < 0.01  # off the clean end and off pure noise
    # torch tensors work the same
    ts = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(loss_weights(ts, "min_snr"), torch.tensor(loss_weights(ts.numpy().astype(float), "min_snr"),
                                                                    dtype=torch.float32))
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'.*none, cosmap, min_snr"):
        loss_weights(s, "snr")
    with pytest.raises(ValueError, match="gamma > 0"):
        loss_weights(s, "min_snr", gamma=0)
