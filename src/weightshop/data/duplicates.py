"""Near duplicates that survive a crop, a rescale and a recompression: image features, confirmed by the pixels.

The perceptual hash (check.py) finds exact-ish copies, but a copy cropped by 3 % per side and re-saved as JPEG 70
moves it by 12 of 64 bits, well past its threshold of 6. Two measurements replace it for such copies:

* features: the judge layer's image features (EfficientNet-Lite0, ImageNet; `judge.features`), compared by
  cosine similarity. They see the same picture through crops, rescaling and recompression, but they also see two
  different pictures of one subject as alike: two shapes-world scenes of the same concept reach 0.98.
* aligned pixels: the best normalised cross-correlation of two small colour thumbnails when one is laid over the
  other at the scales and offsets a crop of up to FEATURE_MAX_CROP per side produces. A copy matches its source
  closely there; a different picture of the same subject does not line up pixel for pixel.

A pair is a near duplicate by features when both agree: cosine >= FEATURE_COSINE and aligned similarity >=
ALIGNED_NCC. The thresholds and what they were calibrated on are written beside them (tests/data/test_duplicates.py
measures them again).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

# Calibrated on augmented copies vs distinct images, through this module's path (`embed` at FEATURE_INPUT px,
# `aligned_similarity`); docs/curation.md has the tables and tests/data/test_duplicates.py re-measures a slice:
# - synthetic photo-like images (tests/data/photos.py; 288 images in 24 sets of 12, mixed sizes): the 1584 distinct
#   pairs within sets reach cosine 0.873 (their median 0.66) but line up at 0.65 at most; 288 augmented copies (crop
#   3-5 % per side, rescale 0.5-0.8, brightness +-6 %, contrast +-5 %, JPEG 60-80) keep cosine >= 0.845 and aligned
#   pixels >= 0.963; every 3 % crop + JPEG 70 copy >= 0.883 / 0.960.
# - shapes-world domain sets (16 clean sets, 576 images, 11232 distinct pairs within sets): distinct scenes of one
#   concept reach cosine 0.980, above most copies (features alone cannot tell them apart), and line up at 0.906.
# So cosine >= 0.75 picks candidates (every photo copy, with room) and aligned pixels >= 0.93 decides (between the
# shapes' distinct 0.906 and the photo copies' 0.960). On 64 px shapes scenes a JPEG'd or rescaled copy loses too
# much to line up: 36 % of 3 % crop + JPEG 70 copies and 16 % of augmented copies are found (with the perceptual
# hash: 72 % and 49 %); on the photos 100 % of both (the hash alone: 62 % and 38 %).
FEATURE_COSINE = 0.75
ALIGNED_NCC = 0.93
FEATURE_MAX_CROP = 0.08   # the largest crop per side (fraction of the side) the alignment search covers
THUMB_SIDE = 48           # the reference thumbnail's shorter side in the alignment search
PRESCREEN_SIDE = 24       # ... and in the quick first look (see `feature_pairs`)
PRESCREEN_NCC = 0.80
_STEP = 0.02              # crop fractions searched: 0, 0.02, ... FEATURE_MAX_CROP
FEATURE_BATCH = 32        # images embedded at a time while the check reads them
FEATURE_SIDE = 256        # copies waiting to be embedded are reduced to this shorter side
FEATURE_INPUT = 128       # the network's input side for the check (see `embed`)
FEATURE_ONE_THREAD = 64   # sets up to this many images are embedded on one CPU thread (see `embed`)
FEATURE_NEIGHBOURS = 4    # only each image's nearest few by cosine are aligned: duplicates are nearest neighbours


def feature_copy(image: Image.Image, side: int = FEATURE_SIDE) -> Image.Image:
    """The copy that is embedded: shorter side at most `side` (the extractor takes it to 224 and centre-crops), so
    a batch waiting to be embedded holds no full-size photos."""
    return thumbnail(image, side)


def embed(extractor, images: list[Image.Image], size: int = FEATURE_INPUT, threads: int | None = None) -> np.ndarray:
    """Features of `images` as the check computes them: the judge layer's EfficientNet-Lite0 (`judge.features`) on
    its own preprocessing (shorter side 224, centre crop, [-1, 1]) reduced to `size` px before the network. The
    network pools globally, so any size gives its 1280 features; at 128 px it runs 4-5x faster than at 224 on CPU
    (24 images: 0.11 s vs 0.53 s on two threads, 0.29 s vs 1.7 s on one, on a busy machine), which keeps the check
    within 1.5x its time without them, and the calibration (FEATURE_COSINE) was measured through this same path.
    Any other extractor is called through its `embed`. `threads` caps torch's CPU threads meanwhile (a few dozen
    small images gain nothing from a thread pool, and on a busy 2-core machine one thread was 4x faster than two)."""
    model = getattr(extractor, "model", None)
    if size == 224 or model is None or not hasattr(model, "features"):
        return np.asarray(extractor.embed(images), dtype=np.float32)
    import torch
    from torch.nn import functional as F

    from weightshop.judge.features import preprocess

    out = []
    device = getattr(extractor, "device", "cpu")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(min(before, threads))
    try:
        with torch.inference_mode():
            for i in range(0, len(images), FEATURE_BATCH):
                x = preprocess(images[i:i + FEATURE_BATCH])
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                out.append(model.features(x.to(device)).float().cpu().numpy())
    finally:
        torch.set_num_threads(before)
    return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)


def thumbnail(image: Image.Image, side: int = 2 * THUMB_SIDE) -> Image.Image:
    """A small RGB copy kept per image for the alignment check (shorter side `side`, never enlarged)."""
    scale = min(1.0, side / min(image.size))
    if scale == 1.0:
        return image.convert("RGB").copy()
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.Resampling.BOX)


def _array(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    method = Image.Resampling.BOX if size[0] <= image.width else Image.Resampling.BILINEAR
    return np.asarray(image.resize(size, method), dtype=np.float32)


def aligned_similarity(a: Image.Image, b: Image.Image, max_crop: float = FEATURE_MAX_CROP,
                       side: int = THUMB_SIDE) -> float:
    """How well one picture lines up with the other, pixel for pixel, as a crop of it: the largest normalised
    cross-correlation (RGB, each channel's mean removed) over crops of 0 to `max_crop` per side and every offset,
    either way round. 1.0 for the same pixels; a rescaled, recompressed 3 % crop scores about 0.96 or more."""
    best = -1.0
    for ref, crop in ((a, b), (b, a)):
        scale = side / min(ref.size)
        W, H = max(1, round(ref.width * scale)), max(1, round(ref.height * scale))
        x = _array(ref, (W, H))
        for k in range(int(round(max_crop / _STEP)) + 1):
            f = k * _STEP
            # the crop keeps its own aspect; its larger relative side spans 1 - 2f of the reference
            fit = (1 - 2 * f) * min(W / crop.width, H / crop.height)
            w, h = max(2, round(crop.width * fit)), max(2, round(crop.height * fit))
            if w > W or h > H:
                continue
            y = _array(crop, (w, h))
            y = y - y.mean((0, 1))
            ny = float(np.sqrt((y * y).sum()))
            if ny < 1e-6:
                continue
            win = np.lib.stride_tricks.sliding_window_view(x, (h, w), axis=(0, 1))  # (oy, ox, 3, h, w)
            win = win.reshape(win.shape[0] * win.shape[1], 3, h * w)
            win = win - win.mean(2, keepdims=True)
            num = np.einsum("kcp,cp->k", win, y.transpose(2, 0, 1).reshape(3, h * w))
            den = np.sqrt(np.einsum("kcp,kcp->k", win, win)) * ny
            best = max(best, float((num / np.maximum(den, 1e-6)).max()))
    return best


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return e @ e.T


def feature_pairs(embeddings: np.ndarray, thumbs: list[Image.Image], cosine: float = FEATURE_COSINE,
                  ncc: float = ALIGNED_NCC, skip: Callable[[int, int], bool] | None = None,
                  neighbours: int = FEATURE_NEIGHBOURS) -> list[tuple[int, int, float, float]]:
    """(i, j, cosine, aligned similarity) for every pair i < j that is a near duplicate by features: cosine >=
    `cosine` and aligned pixels >= `ncc`. Only pairs where one is among the other's `neighbours` nearest by cosine are
    aligned, so the cost grows linearly with the set. `skip(i, j)` leaves out pairs already known."""
    c = cosine_matrix(embeddings)
    n = len(c)
    near = np.zeros((n, n), dtype=bool)
    if n > 1:
        masked = c - 2 * np.eye(n)
        top = np.argsort(-masked, axis=1)[:, :min(neighbours, n - 1)]
        near[np.repeat(np.arange(n), top.shape[1]), top.ravel()] = True
    near |= near.T
    out = []
    for i, j in zip(*np.nonzero(np.triu((c >= cosine) & near, k=1))):
        i, j = int(i), int(j)
        if skip and skip(i, j):
            continue
        # a first look at 24 px costs 1 ms instead of 8: distinct photos line up at 0.53 at most there, copies at
        # 0.92 or more (a copy lines up better when smaller), so only likely copies get the 48 px search
        if aligned_similarity(thumbs[i], thumbs[j], side=PRESCREEN_SIDE) < PRESCREEN_NCC:
            continue
        s = aligned_similarity(thumbs[i], thumbs[j])
        if s >= ncc:
            out.append((i, j, round(float(c[i, j]), 4), round(s, 4)))
    return out
