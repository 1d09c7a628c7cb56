"""A judge for any model: how close generated images come to a LoRA's training images, from position-free
image statistics. It knows nothing of the prompt, so it reports no adherence."""

from __future__ import annotations

import numpy as np
from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.judge.base import CONCEPT, Job, JudgeIdentity


STATS_SIDE = 64


def image_statistics(images: list[Image.Image]) -> np.ndarray:
    """(N, 80) position-free statistics of each image (center-cropped square, area-resized to 64 px):
    64 palette bins (RGB at 4 levels per channel: which colours, wherever they are), 8 bins of edge strength
    (luminance gradient magnitude: flat, soft or sharp), 8 bins of edge direction (weighted by strength).

    Cheap, deterministic and model-independent. Position-free on purpose: in raw pixels the average of a
    set (a grey blur) lies closer to every member than the members lie to each other, so a pixel distance
    rewards mush; these statistics put blur and noise far from a set of real images, and the edge
    directions of a star differ from a circle's.
    """
    rows = []
    for im in images:
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((STATS_SIDE, STATS_SIDE), Image.BOX)
        rgb = np.asarray(im).astype(np.int64) * 4 // 256
        bins = ((rgb[..., 0] * 4 + rgb[..., 1]) * 4 + rgb[..., 2]).ravel()
        palette = np.bincount(bins, minlength=64) / bins.size
        lum = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        gx, gy = np.zeros_like(lum), np.zeros_like(lum)
        gx[:, 1:-1], gy[1:-1, :] = (lum[:, 2:] - lum[:, :-2]) / 2, (lum[2:, :] - lum[:-2, :]) / 2
        magnitude = np.hypot(gx, gy)
        strength = np.histogram(np.clip(magnitude, 0, 0.5), bins=8, range=(0, 0.5))[0] / magnitude.size
        direction = np.histogram(np.mod(np.arctan2(gy, gx), np.pi), bins=8, range=(0, np.pi), weights=magnitude)[0]
        direction = direction / max(magnitude.sum(), 1e-12)
        rows.append(np.concatenate([palette, strength, direction]))
    return np.stack(rows)


def knn_distance(queries: np.ndarray, references: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Per query: the mean RMS distance to its k nearest references (itself left out when exclude_self)."""
    d = np.sqrt(((queries[:, None, :] - references[None, :, :]) ** 2).mean(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(1)


class TrainingSetDistance:
    """Generic judge for any model: how close the images come to the LoRA's training images.

    distance: per image, the mean RMS distance (image_statistics) to its k nearest training images,
    averaged over images. spread: the same figure among the training images themselves (each left out of
    its own neighbours): how far apart the set's own members are. concept = exp(-distance / spread): 1 at
    distance 0, 0.37 for images as close to the set as its members are to each other, towards 0 far away;
    Turbo's over Raw's is exp(-(Turbo's distance - Raw's) / spread). It has no notion of the prompt, so it
    reports no adherence.
    """

    name = "image-stats"
    identity = JudgeIdentity("image-stats (palette, edge strength and direction histograms)", "", "1")

    def __init__(self, train_images: list[Image.Image], k: int = 5, source: str = ""):
        if len(train_images) < 2:
            raise WeightshopError(f"the generic judge needs at least 2 training images, found {len(train_images)}"
                                  + (f" in {source}" if source else ""))
        self.train = image_statistics(train_images)
        self.k = min(k, len(train_images) - 1)
        self.spread = max(float(knn_distance(self.train, self.train, self.k, exclude_self=True).mean()), 1e-9)
        self.source = source

    def per_image(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, list[float]]:
        distance = knn_distance(image_statistics(images), self.train, self.k)
        return {CONCEPT: [float(x) for x in np.exp(-distance / self.spread)], "distance": [float(x) for x in distance]}

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]:
        """concept from the mean distance (exp of the mean, as the transfer ratio is defined), not a mean of exps."""
        distance = float(knn_distance(image_statistics(images), self.train, self.k).mean())
        return {CONCEPT: float(np.exp(-distance / self.spread)), "distance": distance, "train_spread": self.spread}


