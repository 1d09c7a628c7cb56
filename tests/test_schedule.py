"""Krea 2's schedule: mu anchors from KREA2.md, the shift, and the sigmas diffusers actually samples on."""

import math

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from weightshop.models.schedule import (
    KREA2_SHIFT,
    TURBO_MU,
    base_sigmas,
    euler_step,
    image_tokens,
    noisy_sample,
    sampling_sigmas,
    static_shift_for_mu,
    time_shift,
    velocity_target,
)
from weightshop.models.spec import KREA2, RAW, TURBO


@pytest.mark.parametrize("tokens, mu", [(256, 0.5), (4096, 0.90625), (6400, 1.15)])
def test_mu_anchor_points(tokens, mu):
    assert KREA2_SHIFT.mu(tokens) == pytest.approx(mu, abs=1e-9)


def test_image_tokens_at_1024_is_4096_and_raw_mu_is_0906():
    assert image_tokens(1024, 1024) == 4096
    assert RAW.preset.mu_for(1024, 1024) == pytest.approx(0.906, abs=5e-4)
    assert image_tokens(256, 256) == 256 and RAW.preset.mu_for(256, 256) == pytest.approx(0.5)


@pytest.mark.parametrize("side", [256, 512, 1024, 1280, 2048])
def test_turbo_mu_is_fixed(side):
    assert TURBO.preset.mu_for(side, side) == TURBO_MU == 1.15


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
