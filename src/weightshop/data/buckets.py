"""Aspect-ratio buckets: which training size each image gets, and how it is cut to that size.

Krea 2 works on sizes that are multiples of 16 (an f8 VAE followed by 2x2 patches); the embedded nano
model's f4 VAE needs multiples of 8. A bucket is a (width, height) pair of such multiples whose area is as
close as possible to the target area without exceeding it. Images are never upscaled by default: an
image smaller than its bucket gets a proportionally smaller bucket instead, because enlarged pixels
teach the model softness.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.models.spec import KREA2


def bucket_sizes(target_area: int = KREA2.default_size ** 2, multiple: int = KREA2.size_multiple(),
                 max_aspect: float = 4.0) -> list[tuple[int, int]]:
    """All maximal (w, h) multiple-aligned sizes with w*h <= target_area and aspect within max_aspect.

    For each width the tallest aligned height under the area is taken, and kept only if no wider aligned
    width fits with that height, so every bucket uses the area as fully as the grid allows. The list is
    symmetric (w, h) <-> (h, w) and sorted by aspect ratio (portrait first).
    """
    if multiple <= 0 or target_area < (2 * multiple) ** 2 or max_aspect < 1:
        raise WeightshopError(f"bucket settings target_area={target_area}, multiple={multiple}, "
                              f"max_aspect={max_aspect} "
                              f"are unusable: need multiple > 0, target_area >= (2*multiple)^2, max_aspect >= 1")
    out = []
    for w in range(multiple, target_area // multiple + 1, multiple):
        h = (target_area // w) // multiple * multiple
        if h < multiple or (w + multiple) * h <= target_area:
            continue
        if 1 / max_aspect - 1e-9 <= w / h <= max_aspect + 1e-9:
            out.append((w, h))
    return sorted(out, key=lambda s: (s[0] / s[1], s[0]))


class BucketAssignment(NamedTuple):
    bucket: tuple[int, int] | None     # the size the image trains at; None when it cannot train at all
    reduced: bool                      # True when the nominal bucket was shrunk to avoid upscaling
    nominal: tuple[int, int] | None    # the full-area bucket with the closest aspect ratio
    reason: str | None                 # why the bucket was reduced or refused


def _aspect_distance(width: int, height: int, bucket: tuple[int, int]) -> float:
    return abs(math.log(width / height) - math.log(bucket[0] / bucket[1]))


def assign_bucket(width: int, height: int, buckets: list[tuple[int, int]], upscale: bool = False,
                  multiple: int | None = None) -> BucketAssignment:
    """The bucket with the aspect ratio closest to width:height (log-ratio distance; ties to the larger area).

    Without upscaling, a bucket larger than the image on either side is scaled down, keeping its aspect as
    nearly as the `multiple` grid allows, to the largest size inside the image. `multiple` defaults to the
    greatest common divisor of the bucket sides.
    """
    if width <= 0 or height <= 0 or not buckets:
        raise WeightshopError(f"assign_bucket needs a positive size and at least one bucket (got {width}x{height}, "
                              f"{len(buckets)} buckets)")
    nominal = min(buckets, key=lambda b: (_aspect_distance(width, height, b), -b[0] * b[1], b[0]))
    if upscale or (nominal[0] <= width and nominal[1] <= height):
        return BucketAssignment(nominal, False, nominal, None)
    m = multiple or math.gcd(*[side for b in buckets for side in b])
    aspect = nominal[0] / nominal[1]
    # Anchor on the side that limits the fit, then choose the other side nearest the bucket's aspect.
    if width / nominal[0] < height / nominal[1]:
        w = width // m * m
        h = min(height // m * m, max(m, round(w / aspect / m) * m))
    else:
        h = height // m * m
        w = min(width // m * m, max(m, round(h * aspect / m) * m))
    if min(w, h) < 2 * m:
        return BucketAssignment(None, True, nominal, f"{width}x{height} is too small for any bucket: the closest, "
                                f"{nominal[0]}x{nominal[1]}, would shrink below {2 * m} px on a side without upscaling")
    return BucketAssignment((w, h), True, nominal,
                            f"{width}x{height} is smaller than its {nominal[0]}x{nominal[1]} bucket; "
                            f"it trains at {w}x{h} instead (no upscaling)")


@dataclass(frozen=True)
class ResizePolicy:
    resize: str = "downscale-only"     # or "allow-upscale"
    crop: str = "center"
    upscale: bool = False
    alpha_background: tuple[int, int, int] = (255, 255, 255)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alpha_background"] = list(self.alpha_background)
        return d

    @classmethod
    def from_any(cls, policy: "ResizePolicy | dict | None") -> "ResizePolicy":
        if policy is None:
            return cls()
        if isinstance(policy, cls):
            return policy
        upscale = bool(policy.get("upscale", False))
        if policy.get("crop", "center") != "center":
            raise WeightshopError(f"crop policy {policy.get('crop')!r} is not supported (accepted: 'center')")
        return cls(resize=policy.get("resize", "allow-upscale" if upscale else "downscale-only"),
                   crop="center", upscale=upscale,
                   alpha_background=tuple(int(c) for c in policy.get("alpha_background", (255, 255, 255))))


def resize_and_crop(image: Image.Image, bucket: tuple[int, int], policy: ResizePolicy | dict | None = None
                    ) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Scale so the bucket is covered, then cut its centre: returns (image of exactly `bucket`, crop box).

    The crop box is the region of the *input* image (left, top, right, bottom, in its pixel units, possibly
    fractional) that becomes the output; resampling reads straight from that region, so there is one
    resampling step and no rounding of an intermediate size.
    """
    policy = ResizePolicy.from_any(policy)
    bw, bh = bucket
    w, h = image.size
    scale = max(bw / w, bh / h)
    if scale > 1 + 1e-9 and not policy.upscale:
        raise WeightshopError(f"image {w}x{h} is smaller than bucket {bw}x{bh} and the policy forbids upscaling "
                              f"(use assign_bucket, which shrinks the bucket, or set upscale)")
    if abs(scale - 1) < 1e-9:
        left, top = (w - bw) // 2, (h - bh) // 2  # no resampling: cut whole pixels, keep them bit-exact
        box = (left, top, left + bw, top + bh)
        return image.crop(box), tuple(float(v) for v in box)
    src_w, src_h = bw / scale, bh / scale
    left, top = (w - src_w) / 2, (h - src_h) / 2
    box = (left, top, left + src_w, top + src_h)
    return image.resize((bw, bh), Image.Resampling.LANCZOS, box=box), box
