"""weightshop.data.images: every conversion gives the right pixels; every fault is refused with a reason."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from weightshop.data.images import ImageRejected, estimate_jpeg_quality, load_image
from weightshop.errors import WeightshopError


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_claiming(path, width, height):
    """A valid tiny PNG whose header claims width x height (what a decompression bomb looks like)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_exif_rotated_jpeg_is_upright(tmp_path):
    upright = Image.new("RGB", (20, 40), (255, 0, 0))
    upright.paste((0, 0, 255), (0, 20, 20, 40))             # top red, bottom blue
    stored = upright.rotate(90, expand=True)                 # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6                                         # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    loaded = load_image(tmp_path / "r.jpg")
    assert loaded.image.size == (20, 40)
    assert np.abs(np.subtract(loaded.image.getpixel((10, 5)), (255, 0, 0))).max() < 12
    assert np.abs(np.subtract(loaded.image.getpixel((10, 35)), (0, 0, 255))).max() < 12
    assert any("EXIF orientation 6" in f for f in loaded.fixes)
    assert loaded.info["width"] == 20 and loaded.info["stored_size"] == [40, 20]


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk_to_rgb(tmp_path, suffix):
    c, m, y, k = 100, 50, 0, 64
    Image.new("CMYK", (16, 16), (c, m, y, k)).save(tmp_path / f"c{suffix}", quality=100)
    loaded = load_image(tmp_path / f"c{suffix}")
    expected = [255 * (1 - v / 255) * (1 - k / 255) for v in (c, m, y)]
    assert loaded.image.mode == "RGB" and loaded.info["mode"] == "CMYK"
    assert np.abs(np.subtract(loaded.image.getpixel((8, 8)), expected)).max() <= (2 if suffix == ".tif" else 6)
    assert any("CMYK" in f for f in loaded.fixes)


def test_16bit_gray_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 32767, 32896, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    got = np.asarray(loaded.image)[0, :, 0]
    assert got.tolist() == [0, 1, 127, 128, 255, 4]          # round(v * 255 / 65535)
    assert np.asarray(loaded.image)[..., 0].tolist() == np.asarray(loaded.image)[..., 2].tolist()
    assert any("16-bit" in f for f in loaded.fixes)


def test_palette_to_rgb_exact(tmp_path):
    p = Image.new("P", (4, 1))
    palette = [(12, 34, 56), (200, 10, 99), (0, 255, 1), (7, 7, 7)]
    p.putpalette([v for rgb in palette for v in rgb])
    p.putdata([0, 1, 2, 3])
    p.save(tmp_path / "p.png")
    loaded = load_image(tmp_path / "p.png")
    assert [loaded.image.getpixel((x, 0)) for x in range(4)] == palette
    assert loaded.fixes == ["palette (P) -> RGB"]


def test_rgba_composited_on_background(tmp_path):
    bg = (0, 128, 255)
    im = Image.new("RGBA", (3, 1))
    im.putdata([(10, 20, 30, 0), (200, 100, 50, 128), (1, 2, 3, 255)])
    im.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", alpha_background=bg).image
    assert out.getpixel((0, 0)) == bg
    blend = tuple((f * 128 + b * 127 + 127) // 255 for f, b in zip((200, 100, 50), bg))
    assert out.getpixel((1, 0)) == blend
    assert out.getpixel((2, 0)) == (1, 2, 3)


def test_palette_transparency_and_la(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0])
    p.putdata([0, 1])
    p.save(tmp_path / "t.png", transparency=0)
    out = load_image(tmp_path / "t.png", alpha_background=(9, 9, 9)).image
    assert out.getpixel((0, 0)) == (9, 9, 9) and out.getpixel((1, 0)) == (0, 255, 0)
    Image.new("LA", (2, 2), (100, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png", alpha_background=(1, 2, 3)).image.getpixel((0, 0)) == (1, 2, 3)


def test_srgb_profile_kept_and_other_profiles_converted(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(tmp_path / "s.png", icc_profile=srgb)
    loaded = load_image(tmp_path / "s.png")
    assert loaded.fixes == [] and loaded.image.getpixel((0, 0)) == (10, 200, 30)
    Image.new("RGB", (4, 4), (10, 200, 30)).save(tmp_path / "bad.png", icc_profile=b"not a profile")
    assert load_image(tmp_path / "bad.png").fixes == []                  # a broken profile is ignored


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    loaded = load_image(tmp_path / "a.gif")
    assert loaded.image.getpixel((4, 4)) == (255, 0, 0)
    assert any("first of 2 frames" in f for f in loaded.fixes)


def test_rejections(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "notes.jpg").write_text("these are my notes, not a photo\n")
    _noise(256, 256).save(tmp_path / "full.jpg", quality=90)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:3000])
    _noise(256, 256).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:5000])
    expect = {"empty.png": "empty file", "corrupt.png": "not an image", "notes.jpg": "text file",
              "cut.jpg": "truncated", "cut.png": "truncated"}
    for name, words in expect.items():
        with pytest.raises(ImageRejected) as info:
            load_image(tmp_path / name)
        assert words in info.value.reason, (name, info.value.reason)
        assert isinstance(info.value, WeightshopError) and name in str(info.value)
    with pytest.raises(ImageRejected, match="cannot be read"):
        load_image(tmp_path / "absent.png")


def test_truncated_rejected_even_if_pillow_is_told_to_load_truncated(tmp_path):
    _noise(256, 256).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:3000])
    saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
    try:
        with pytest.raises(ImageRejected, match="truncated"):
            load_image(tmp_path / "cut.jpg")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True       # restored for whoever set it
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


@pytest.mark.parametrize("side", [12_000, 100_000])        # under and over Pillow's own hard limit
def test_decompression_bomb_refused_from_header(tmp_path, side):
    path = _png_claiming(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageRejected, match="pixel limit"):
        load_image(path)


def test_pixel_limit_is_configurable(tmp_path):
    _noise(100, 100).save(tmp_path / "n.png")
    with pytest.raises(ImageRejected, match=r"100x100 = 0.0 MP exceeds the pixel limit of 0.005 MP"):
        load_image(tmp_path / "n.png", max_pixels=5000)
    assert load_image(tmp_path / "n.png", max_pixels=10_000).image.size == (100, 100)


def test_jpeg_quality_estimate(tmp_path):
    for quality in (20, 50, 75, 90):
        _noise(64, 64).save(tmp_path / "q.jpg", quality=quality)
        with Image.open(tmp_path / "q.jpg") as im:
            assert abs(estimate_jpeg_quality(im.quantization) - quality) <= 1
        assert abs(load_image(tmp_path / "q.jpg").info["jpeg_quality"] - quality) <= 1
    assert estimate_jpeg_quality(None) is None


@pytest.mark.parametrize("suffix,options", [(".png", {}), (".bmp", {}), (".tif", {}), (".webp", {"lossless": True}),
                                            (".jpg", {"quality": 95}), (".gif", {})])
def test_common_formats_load(tmp_path, suffix, options):
    from PIL import features

    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    y, x = np.mgrid[0:32, 0:48]
    source = Image.fromarray(np.stack([x * 5, y * 7, (x + y) * 3], -1).astype(np.uint8))
    source.save(tmp_path / f"f{suffix}", **options)
    loaded = load_image(tmp_path / f"f{suffix}")
    assert loaded.image.mode == "RGB" and loaded.image.size == (48, 32)
    diff = np.abs(np.asarray(loaded.image).astype(int) - np.asarray(source).astype(int)).max()
    assert diff == 0 if suffix in (".png", ".bmp", ".tif", ".webp") else diff < 40
