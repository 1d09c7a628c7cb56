"""weightshop.data.buckets: numeric checks of bucket sizes, assignment and the resize/crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from weightshop.data.buckets import ResizePolicy, assign_bucket, bucket_sizes, resize_and_crop
from weightshop.errors import WeightshopError

AREA = 1024 * 1024


@pytest.mark.parametrize("area,multiple", [(AREA, 16), (256 * 256, 8), (512 * 512, 16)])
def test_bucket_sizes_are_aligned_maximal_and_symmetric(area, multiple):
    buckets = bucket_sizes(area, multiple, 4.0)
    assert len(buckets) == len(set(buckets)) > 5
    for w, h in buckets:
        assert w % multiple == 0 and h % multiple == 0
        assert w * h <= area
        assert 0.25 <= w / h <= 4.0
        assert (w + multiple) * h > area and w * (h + multiple) > area   # no aligned size fits with more area
        assert (h, w) in buckets
    side = int(math.isqrt(area))
    assert (side, side) in buckets
    assert max(b[0] / b[1] for b in buckets) == 4.0


def test_bucket_settings_validated():
    with pytest.raises(WeightshopError, match="multiple"):
        bucket_sizes(100, 16, 4.0)


@pytest.mark.parametrize("size,expected", [
    ((1920, 1080), (1360, 768)),
    ((1080, 1920), (768, 1360)),
    ((3000, 3000), (1024, 1024)),
    ((8000, 1000), (2048, 512)),       # aspect 8 clamps to the widest bucket (4:1)
    ((6000, 4000), (1248, 832)),
])
def test_assign_bucket_closest_aspect(size, expected):
    choice = assign_bucket(*size, bucket_sizes(AREA, 16, 4.0))
    assert choice.bucket == expected and choice.nominal == expected and not choice.reduced


def test_assign_bucket_matches_brute_force():
    buckets = bucket_sizes(AREA, 16, 4.0)
    rng = np.random.default_rng(0)
    for w, h in rng.integers(600, 5000, (200, 2)):
        best = min(abs(math.log(w / h) - math.log(bw / bh)) for bw, bh in buckets)
        nominal = assign_bucket(int(w), int(h), buckets, upscale=True).bucket
        assert abs(math.log(w / h) - math.log(nominal[0] / nominal[1])) == pytest.approx(best)


@pytest.mark.parametrize("multiple", [16, 8])
def test_no_upscale_reduces_bucket_to_fit_inside(multiple):
    buckets = bucket_sizes(AREA, multiple, 4.0)
    square = assign_bucket(1000, 1000, buckets, multiple=multiple)
    assert square.reduced and square.nominal == (1024, 1024)
    assert square.bucket == (1000 // multiple * multiple,) * 2
    wide = assign_bucket(4000, 500, buckets, multiple=multiple)
    assert wide.nominal == (2048, 512) and wide.reduced
    w, h = wide.bucket
    assert h == 500 // multiple * multiple and w == 4 * h      # aspect kept exactly where the grid allows
    assert "no upscaling" in wide.reason
    up = assign_bucket(1000, 1000, buckets, upscale=True)
    assert up.bucket == (1024, 1024) and not up.reduced
    for size in [(700, 390), (333, 777), (1500, 200), (64, 64)]:
        choice = assign_bucket(*size, buckets, multiple=multiple)
        bw, bh = choice.bucket
        assert bw <= size[0] and bh <= size[1] and bw % multiple == 0 and bh % multiple == 0


def test_too_small_for_any_bucket():
    choice = assign_bucket(20, 500, bucket_sizes(AREA, 16, 4.0))
    assert choice.bucket is None and "32 px" in choice.reason


def _gradient(w, h):
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x ^ y) & 255], -1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize("size,multiple", [((1920, 1080), 16), ((1080, 1920), 16), ((1000, 1000), 16),
                                           ((4000, 500), 16), ((1000, 1000), 8), ((1333, 755), 8)])
def test_resize_and_crop_exact_sizes_without_upscaling(size, multiple):
    image = _gradient(*size)
    choice = assign_bucket(*size, bucket_sizes(AREA, multiple, 4.0), multiple=multiple)
    out, box = resize_and_crop(image, choice.bucket, ResizePolicy())
    assert out.size == choice.bucket
    assert out.width % multiple == 0 and out.height % multiple == 0
    left, top, right, bottom = box
    assert right - left <= size[0] + 1e-6 and bottom - top <= size[1] + 1e-6    # never enlarges
    assert left == pytest.approx(size[0] - right, abs=1) and top == pytest.approx(size[1] - bottom, abs=1)
    assert (right - left) / (bottom - top) == pytest.approx(out.width / out.height, rel=1e-6)


def test_resize_covers_then_centre_crops():
    out, box = resize_and_crop(_gradient(1920, 1080), (1360, 768))
    scale = max(1360 / 1920, 768 / 1080)
    assert box[1] == pytest.approx(0) and box[3] == pytest.approx(1080)         # height fully used
    assert box[2] - box[0] == pytest.approx(1360 / scale)
    assert box[0] == pytest.approx((1920 - 1360 / scale) / 2)


def test_crop_only_is_pixel_exact():
    image = _gradient(100, 64)
    out, box = resize_and_crop(image, (96, 64))
    assert box == (2.0, 0.0, 98.0, 64.0)
    assert np.array_equal(np.asarray(out), np.asarray(image)[:, 2:98])


def test_upscale_refused_unless_allowed():
    with pytest.raises(WeightshopError, match="forbids upscaling"):
        resize_and_crop(_gradient(500, 500), (512, 512))
    out, _ = resize_and_crop(_gradient(500, 500), (512, 512), {"upscale": True})
    assert out.size == (512, 512)
    with pytest.raises(WeightshopError, match="crop policy"):
        resize_and_crop(_gradient(500, 500), (496, 496), {"crop": "random"})
