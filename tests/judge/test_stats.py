"""Numeric tests for the judge layer's metric math (judge.stats): each checks a property that a wrong formula
breaks (a biased KID, a wrong matrix square root, a mis-centred bootstrap, a wrong SSIM window)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weightshop.errors import WeightshopError
from weightshop.judge import stats


# ---- KID ----

def brute_force_mmd2(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out as sums over index pairs."""
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_equals_the_formula_on_tiny_inputs():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(0.7, 1.3, size=(5, 3))
    mean, std = stats.kid(x, y, subsets=3, subset_size=100)  # capped at 5: every subset is the whole set
    assert mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    assert stats.mmd2_unbiased(x, y) == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)


def test_kid_is_unbiased_for_one_distribution():
    """200 independent pairs of samples of N(0, I): the mean of the estimates is within 3 standard errors of 0,
    while the biased (V-statistic) estimate, which keeps k(x_i, x_i), sits many standard errors above 0."""
    rng = np.random.default_rng(2)
    unbiased, biased = [], []
    for _ in range(200):
        x, y = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
        unbiased.append(stats.mmd2_unbiased(x, y))
        kxx, kyy, kxy = (stats.polynomial_kernel(p, q) for p, q in ((x, x), (y, y), (x, y)))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    se = np.std(unbiased) / math.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * np.std(biased) / math.sqrt(len(biased))
    assert min(unbiased) < 0  # an unbiased estimate of 0 must go negative sometimes


def test_kid_is_positive_and_grows_with_a_shift():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16))
    values = [stats.kid(x, rng.normal(size=(300, 16)) + shift, subsets=20, subset_size=100, rng=0)[0]
              for shift in (0.25, 0.5, 1.0)]
    same = stats.kid(x, rng.normal(size=(300, 16)), subsets=20, subset_size=100, rng=0)
    assert abs(same[0]) < 3 * same[1] + 1e-3
    assert 0 < values[0] < values[1] < values[2]
    assert values[0] > 5 * abs(same[0])


def test_kid_is_reproducible_and_checks_shapes():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(60, 4))
    assert stats.kid(x, y, subsets=5, subset_size=20) == stats.kid(x, y, subsets=5, subset_size=20)
    with pytest.raises(WeightshopError):
        stats.kid(x, y[:, :3])
    with pytest.raises(WeightshopError):
        stats.kid(x[:1], y)


# ---- Fréchet distance ----

def with_exact_moments(rng, mean, cov_sqrt, n=64):
    """n samples whose sample mean is `mean` and whose sample covariance (ddof 1) is cov_sqrt @ cov_sqrt.T."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whitened: sample covariance I
    return z @ cov_sqrt.T + mean


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(5)
    m1, m2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    x = with_exact_moments(rng, m1, np.diag(np.sqrt(v1)))
    y = with_exact_moments(rng, m2, np.diag(np.sqrt(v2)))
    closed = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert stats.frechet_distance(x, y) == pytest.approx(closed, rel=1e-9)
    assert stats.frechet_distance(y, x) == pytest.approx(closed, rel=1e-9)


def test_frechet_distance_is_zero_for_identical_sets_and_right_for_full_covariances():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(100, 6)) @ rng.normal(size=(6, 6))
    assert stats.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    y = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6)) + 0.3
    # reference: tr(sqrt(S1 S2)) from the eigenvalues of S1 S2 (real and non-negative for PSD S1, S2)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    cross = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross
    assert stats.frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)


# ---- bootstrap ----

def test_bootstrap_interval_of_the_mean_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):
        lo, hi = stats.bootstrap_ci(rng.normal(5.0, 2.0, size=40), n=1000, rng=rng)
        covered += lo <= 5.0 <= hi
    assert 0.90 <= covered / 200 <= 0.99


def test_bootstrap_with_any_statistic_and_levels():
    values = np.random.default_rng(8).exponential(size=200)
    lo, hi = stats.bootstrap_ci(values, stat=lambda v: float(np.percentile(v, 75)), n=500)
    assert lo < np.percentile(values, 75) < hi
    lo80, hi80 = stats.bootstrap_ci(values, n=2000, level=0.80)
    lo99, hi99 = stats.bootstrap_ci(values, n=2000, level=0.99)
    assert lo99 < lo80 < values.mean() < hi80 < hi99


def test_paired_bootstrap_sign_and_width():
    rng = np.random.default_rng(9)
    a = rng.normal(0, 10, size=100)  # images differ a lot from one another ...
    better = stats.paired_bootstrap(a, a + 0.5 + rng.normal(0, 0.2, size=100))  # ... the candidate moves each a bit
    assert better["mean_diff"] == pytest.approx(0.5, abs=0.05)
    assert 0 < better["lo"] < better["mean_diff"] < better["hi"]
    assert better["hi"] - better["lo"] < 0.15  # ~ 2 * 1.96 * 0.2 / 10: pairing removed the images' spread of 10
    worse = stats.paired_bootstrap(a, a - 0.5 + rng.normal(0, 0.2, size=100))
    assert worse["hi"] < 0
    same = stats.paired_bootstrap(a, a + rng.normal(0, 0.2, size=100))
    assert same["lo"] < 0 < same["hi"]
    wide = stats.paired_bootstrap(a[:25], a[:25] + 0.5 + rng.normal(0, 0.2, size=25))
    ratio = (better["hi"] - better["lo"]) / (wide["hi"] - wide["lo"])
    assert 0.35 < ratio < 0.7  # width ~ 1 / sqrt(n): 4x the pairs, about half the width


# ---- PSNR, SSIM ----

def test_psnr_of_a_known_noise_level():
    a = np.full((32, 32, 3), 128, dtype=np.uint8)
    noise = np.where(np.indices((32, 32, 3)).sum(0) % 2 == 0, 10, -10)
    b = (a.astype(int) + noise).astype(np.uint8)  # MSE exactly 100
    assert stats.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert stats.psnr(a, a) == math.inf


def natural_ish(rng, size=64):
    """A smooth random RGB image (low-pass noise) with some structure for SSIM to see."""
    x = rng.normal(size=(size // 8, size // 8, 3))
    x = np.kron(x, np.ones((8, 8, 1)))
    return np.clip(128 + 50 * x, 0, 255).astype(np.uint8)


def brute_force_ssim(a, b):
    """SSIM of greyscale images window by window with an explicit 11x11 Gaussian (sigma 1.5)."""
    r = np.arange(-5, 6)
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            out.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(out))


def test_ssim_is_one_for_identical_images_drops_with_noise_and_is_symmetric():
    rng = np.random.default_rng(10)
    a = natural_ish(rng)
    assert stats.ssim(a, a) == pytest.approx(1.0)
    scores = []
    for sigma in (2, 8, 32):
        b = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)
        scores.append(stats.ssim(a, b))
        assert stats.ssim(a, b) == pytest.approx(stats.ssim(b, a), abs=1e-12)
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0


def test_ssim_matches_the_window_by_window_definition():
    rng = np.random.default_rng(11)
    a = rng.integers(0, 256, (20, 24)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    assert stats.ssim(a, b) == pytest.approx(brute_force_ssim(a, b), rel=1e-9)
    rgb_a, rgb_b = natural_ish(rng, 32), natural_ish(rng, 32)
    weights = np.array([0.299, 0.587, 0.114])
    assert stats.ssim(rgb_a, rgb_b) == pytest.approx(brute_force_ssim(rgb_a @ weights, rgb_b @ weights), rel=1e-9)
    with pytest.raises(WeightshopError):
        stats.ssim(a, b[:, :10])


# ---- feature-space figures ----

def test_diversity():
    rng = np.random.default_rng(12)
    f = rng.normal(size=(1, 32))
    assert stats.diversity([np.repeat(f, 4, 0), np.repeat(-f, 3, 0)]) == pytest.approx(0.0, abs=1e-12)
    eye = np.eye(4)
    assert stats.diversity([eye]) == pytest.approx(1.0)  # orthogonal: cosine distance 1
    assert stats.diversity([eye, np.repeat(f, 2, 0), f]) == pytest.approx(0.5)  # groups weigh the same; 1 row skipped
    with pytest.raises(WeightshopError):
        stats.diversity([f])


def test_nearest_finds_a_planted_copy_and_paired_distance():
    rng = np.random.default_rng(13)
    refs = rng.normal(size=(50, 64))
    queries = np.stack([refs[17] * 1.3 + rng.normal(0, 0.05, 64), refs[3] + rng.normal(0, 0.05, 64)])
    idx, sim = stats.nearest(queries, refs)
    assert idx.tolist() == [17, 3]
    assert (sim > 0.99).all()
    others = np.delete(refs, [3, 17], axis=0)
    assert stats.nearest(queries, others)[1].max() < 0.6
    d = stats.paired_feature_distance(refs[:3], np.stack([refs[0] * 2, -refs[1], refs[2] + 0.0]))
    assert d == pytest.approx([0.0, 2.0, 0.0], abs=1e-12)
