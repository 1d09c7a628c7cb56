"""The metric math of the judge layer, pure numpy: set distances (KID, Fréchet distance), confidence intervals
(bootstrap, paired bootstrap), paired image fidelity (PSNR, SSIM) and feature-space figures (diversity, nearest
neighbour, paired distance). Features come from `judge.features` but nothing here depends on where they came from.

Randomness: every function that resamples takes `rng` (a numpy Generator or a seed); None means seed 0, so a
report computed twice gives the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from weightshop.errors import WeightshopError


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)


def _features(x, name: str, at_least: int = 1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < at_least:
        raise WeightshopError(f"{name}: expected an (N, D) array of features with N >= {at_least}, got shape {x.shape}")
    return x


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel k(a, b) = (a . b / d + 1) ** 3 between the rows of a and of b."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3) with the polynomial kernel: the within-set means
    leave out k(x_i, x_i), so its expectation is 0 when x and y come from one distribution (it can go negative)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kid(x, y, subsets: int = 100, subset_size: int = 1000, rng=None) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) between feature sets x (N, D) and y (M, D): the unbiased
    MMD^2 with the cubic polynomial kernel, over `subsets` random subsets of `subset_size` rows drawn without
    replacement from each set (the size capped at min(N, M)). Returns (mean, std) over the subsets. Unbiased:
    its expectation is 0 for two samples of the same distribution, so small negative values are normal."""
    x, y = _features(x, "kid", 2), _features(y, "kid", 2)
    if x.shape[1] != y.shape[1]:
        raise WeightshopError(f"kid: feature sizes differ ({x.shape[1]} vs {y.shape[1]})")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise WeightshopError("kid: subsets need at least 2 rows")
    g = _rng(rng)
    values = [mmd2_unbiased(x[g.choice(len(x), m, replace=False)], y[g.choice(len(y), m, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _symmetric(m: np.ndarray) -> np.ndarray:
    return (m + m.T) / 2


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix, from its eigendecomposition."""
    w, v = np.linalg.eigh(_symmetric(s))
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(x, y) -> float:
    """Fréchet distance between Gaussians fitted to x (N, D) and y (M, D) (FID's formula on any features):
    |mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr(sqrt(S_x^1/2 S_y S_x^1/2)). The last trace is tr(sqrt(S_x S_y))
    computed through symmetric matrices only (two eigendecompositions), so it is real and needs no scipy."""
    x, y = _features(x, "frechet_distance", 2), _features(y, "frechet_distance", 2)
    if x.shape[1] != y.shape[1]:
        raise WeightshopError(f"frechet_distance: feature sizes differ ({x.shape[1]} vs {y.shape[1]})")
    sx, sy = np.cov(x, rowvar=False).reshape(x.shape[1], -1), np.cov(y, rowvar=False).reshape(y.shape[1], -1)
    root = _psd_sqrt(sx)
    middle = np.linalg.eigvalsh(_symmetric(root @ sy @ root))
    diff = x.mean(0) - y.mean(0)
    return float(max(diff @ diff + np.trace(sx) + np.trace(sy) - 2 * np.sqrt(np.clip(middle, 0, None)).sum(), 0.0))


def bootstrap_ci(values, stat: Callable = np.mean, n: int = 2000, level: float = 0.95, rng=None) -> tuple[float, float]:
    """Percentile bootstrap interval of stat(values): resample the values with replacement n times and take the
    (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled statistic."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise WeightshopError(f"bootstrap_ci: expected a non-empty 1-D array, got shape {values.shape}")
    samples = values[_rng(rng).integers(0, len(values), (n, len(values)))]
    if stat is np.mean or stat is np.median:
        boot = stat(samples, axis=1)
    else:
        boot = np.array([stat(row) for row in samples])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(a, b, n: int = 2000, level: float = 0.95, rng=None) -> dict:
    """For per-image values of a baseline (a) and a candidate (b) on the same prompts and seeds: the mean of the
    paired differences b - a and its percentile bootstrap interval {mean_diff, lo, hi}. Pairing removes the
    variation between images, so the interval is as narrow as the differences allow."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise WeightshopError(f"paired_bootstrap: expected two 1-D arrays of one length, got {a.shape} and {b.shape}")
    d = b - a
    lo, hi = bootstrap_ci(d, np.mean, n, level, rng)
    return {"mean_diff": float(d.mean()), "lo": lo, "hi": hi}


def _pair(a, b, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise WeightshopError(f"{name}: the two images differ in shape ({a.shape} vs {b.shape})")
    return a, b


def psnr(a, b, max_value: float = 255) -> float:
    """Peak signal-to-noise ratio in dB of two same-shape images (uint8 HxWx3): 10 log10(max^2 / MSE); inf when
    they are identical."""
    a, b = _pair(a, b, "psnr")
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(max_value ** 2 / mse))


def _gaussian_filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D filter with the 1-D kernel g, keeping only windows that fit inside x ('valid')."""
    windows = np.lib.stride_tricks.sliding_window_view
    return windows(windows(x, len(g), axis=0) @ g, len(g), axis=1) @ g


def ssim(a, b, max_value: float = 255, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (Wang et al. 2004) of two same-shape images, on luminance: RGB (HxWx3) is turned into
    Y = 0.299 R + 0.587 G + 0.114 B (BT.601, as Wang's reference code compares greyscale), a 2-D array is used as
    it is. The standard 11x11 Gaussian window (sigma 1.5), C1 = (K1 L)^2, C2 = (K2 L)^2, averaged over the windows
    that fit inside the image. 1 for identical images; symmetric in a and b."""
    a, b = _pair(a, b, "ssim")
    if a.ndim == 3:
        weights = np.array([0.299, 0.587, 0.114])
        a, b = a[..., :3] @ weights, b[..., :3] @ weights
    half = int(round(3.5 * sigma))
    if min(a.shape) < 2 * half + 1:
        raise WeightshopError(f"ssim: images must be at least {2 * half + 1} px on each side, got {a.shape}")
    g = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    g /= g.sum()
    mu_a, mu_b = _gaussian_filter_valid(a, g), _gaussian_filter_valid(b, g)
    var_a = _gaussian_filter_valid(a * a, g) - mu_a ** 2
    var_b = _gaussian_filter_valid(b * b, g) - mu_b ** 2
    cov = _gaussian_filter_valid(a * b, g) - mu_a * mu_b
    c1, c2 = (k1 * max_value) ** 2, (k2 * max_value) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def diversity(features_by_group: list) -> float:
    """Mean pairwise cosine distance (1 - cos) between the rows of each group (e.g. the seeds of one prompt),
    averaged over the groups with at least 2 rows, each group weighing the same. 0 when every group's images
    are the same; higher is more varied."""
    per_group = []
    for f in features_by_group:
        f = _features(f, "diversity")
        if len(f) < 2:
            continue
        u = _unit(f)
        sim = u @ u.T
        per_group.append(1.0 - (sim.sum() - np.trace(sim)) / (len(f) * (len(f) - 1)))
    if not per_group:
        raise WeightshopError("diversity: needs at least one group of 2 or more images")
    return float(np.mean(per_group))


def nearest(queries, references) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of its nearest reference row by cosine similarity, and that similarity."""
    q, r = _unit(_features(queries, "nearest")), _unit(_features(references, "nearest"))
    sim = q @ r.T
    idx = sim.argmax(1)
    return idx, sim[np.arange(len(q)), idx]


def paired_feature_distance(a, b) -> np.ndarray:
    """Per pair of rows (a[i], b[i]): the cosine distance 1 - cos, in [0, 2]."""
    a, b = _features(a, "paired_feature_distance"), _features(b, "paired_feature_distance")
    if a.shape != b.shape:
        raise WeightshopError(f"paired_feature_distance: shapes differ ({a.shape} vs {b.shape})")
    return 1.0 - (_unit(a) * _unit(b)).sum(1)
