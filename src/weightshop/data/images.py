"""The single way weightshop reads a training image: every stage that decodes pixels calls `load_image`.

A user's folder holds whatever their phone, scanner or browser produced: rotated JPEGs, CMYK prints,
16-bit scans, palette GIFs, transparent PNGs. Training needs upright 8-bit sRGB-ish RGB, so each
conversion happens here, once, and is recorded as a *fix* the report can show. Anything that cannot be
decoded completely raises `ImageRejected` with a reason a person can act on.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from weightshop.errors import WeightshopError

# 64 million pixels (8000 x 8000) is far beyond any training resolution; larger files are almost always
# scans, panoramas or decompression bombs, and decoding one costs gigabytes of memory.
DEFAULT_MAX_PIXELS = 64_000_000

_STRICT_LOCK = threading.Lock()


class ImageRejected(WeightshopError):
    """An image that cannot be used at all; `reason` is the sentence the manifest and report show."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {reason}" if path is not None else reason)


@dataclass
class LoadedImage:
    image: Image.Image                      # upright, mode RGB, 8 bits per channel
    fixes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # format, mode (as stored), width/height (upright), frames, ...


def image_extensions() -> set[str]:
    """File extensions Pillow can open here (lower case, with dot), including those plugins register."""
    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


@contextlib.contextmanager
def _strict_decoding():
    # Another library may have switched LOAD_TRUNCATED_IMAGES on globally; with it on, a cut-off JPEG
    # decodes into a grey lower half and would be trained on. Force it off while we decode. The lock is
    # only taken in that case, so threads decoding in parallel (Pillow releases the GIL) normally don't wait.
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _STRICT_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut in half by the 512-byte read
            return False
        text = head[:exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text[:-1])


def load_image(path: str | Path, *, alpha_background: tuple[int, int, int] = (255, 255, 255),
               max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode `path` completely into an upright RGB image, or raise ImageRejected saying why not."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageRejected(f"cannot be read: {exc.strerror or exc}", path) from None
    if size == 0:
        raise ImageRejected("empty file (0 bytes)", path)
    with open(path, "rb") as f:
        head = f.read(512)
    with _strict_decoding(), warnings.catch_warnings():
        # Pillow's own bomb check warns at 89 MP and raises at 179 MP; our limit is explicit instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            im = Image.open(path)
        except UnidentifiedImageError:
            what = ("it is a text file" if _looks_like_text(head)
                    else "Pillow does not recognise its contents (corrupt, or another kind of file)")
            ext = path.suffix or "missing"
            raise ImageRejected(f"not an image despite its {ext} extension: {what}", path) from None
        except Image.DecompressionBombError as exc:
            raise ImageRejected(f"exceeds the pixel limit of {max_pixels / 1e6:g} MP, and even Pillow's hard limit "
                                f"(possible decompression bomb): {exc}", path) from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a damaged header
            raise ImageRejected(f"unreadable header ({type(exc).__name__}: {exc})", path) from None
        with im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageRejected(f"header gives an empty size {w}x{h}", path)
            if w * h > max_pixels:
                raise ImageRejected(
                    f"{w}x{h} = {w * h / 1e6:.1f} MP exceeds the pixel limit of {max_pixels / 1e6:g} MP "
                    "(possible decompression bomb; raise max_pixels if the image is genuine)", path)
            info = {"format": im.format, "mode": im.mode, "stored_size": [w, h],
                    "frames": int(getattr(im, "n_frames", 1) or 1)}
            if im.format == "JPEG":
                info["jpeg_quality"] = estimate_jpeg_quality(getattr(im, "quantization", None))
            try:
                im.load()
            except Exception as exc:  # noqa: BLE001
                reason = str(exc) or type(exc).__name__
                kind = "truncated" if "truncat" in reason.lower() else "corrupt"
                raise ImageRejected(f"{kind}: pixel data cannot be decoded ({reason})", path) from None
            fixes: list[str] = []
            if info["frames"] > 1:
                fixes.append(f"used the first of {info['frames']} frames")
            try:
                image = _to_rgb(im, fixes, alpha_background)
            except ImageRejected as exc:
                raise ImageRejected(exc.reason, path) from None
    info["width"], info["height"] = image.size
    return LoadedImage(image=image, fixes=fixes, info=info)


def _to_rgb(im: Image.Image, fixes: list[str], background: tuple[int, int, int]) -> Image.Image:
    orientation = im.getexif().get(0x0112, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        im = ImageOps.exif_transpose(im)
        fixes.append(f"rotated/flipped upright from EXIF orientation {orientation}")
    mode = im.mode
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im, fixes)
    if has_alpha:
        return _composite(im.convert("RGBA"), mode, fixes, background)
    if mode == "RGB":
        return _from_icc(im, fixes)
    if mode == "CMYK":
        out = _from_icc(im, fixes)
        if out.mode != "RGB":
            out = im.convert("RGB")
            fixes.append("CMYK -> RGB (no usable ICC profile: naive conversion, colours approximate)")
        return out
    if mode == "P":
        fixes.append("palette (P) -> RGB")
        return im.convert("RGB")
    if mode in ("L", "1"):
        fixes.append(f"grayscale ({mode}) -> RGB")
        return im.convert("RGB")
    try:
        out = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(f"colour mode {mode} cannot be converted to RGB ({exc})") from None
    fixes.append(f"{mode} -> RGB")
    return out


def _from_icc(im: Image.Image, fixes: list[str]) -> Image.Image:
    """Convert RGB/CMYK with an embedded non-sRGB ICC profile to sRGB; returns `im` unchanged otherwise."""
    icc = im.info.get("icc_profile")
    if not icc:
        return im
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = (ImageCms.getProfileDescription(src) or "").strip()
        if im.mode == "RGB" and "srgb" in name.lower().replace(" ", ""):
            return im
        out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # noqa: BLE001 - a broken profile is ignored, not fatal
        return im
    fixes.append(f"{im.mode} -> sRGB via its embedded ICC profile '{name or 'unnamed'}'")
    return out


def _high_depth_to_rgb(im: Image.Image, fixes: list[str]) -> Image.Image:
    a = np.asarray(im)
    if im.mode == "F":
        lo, hi = (0.0, 1.0) if a.min() >= 0 and a.max() <= 1 else (float(a.min()), float(a.max()))
        how = f"float -> 8-bit (range {lo:g}..{hi:g} mapped to 0..255)"
    elif im.mode.startswith("I;16") or (a.min() >= 0 and a.max() <= 65535):
        lo, hi = 0.0, 65535.0
        how = "16-bit -> 8-bit (value * 255 / 65535)"
    else:
        lo, hi = float(a.min()), float(a.max())
        how = f"32-bit integer -> 8-bit (range {lo:g}..{hi:g} mapped to 0..255)"
    scaled = (a.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    fixes.append(how)
    return Image.fromarray(gray, "L").convert("RGB")


def _composite(rgba: Image.Image, mode: str, fixes: list[str], background: tuple[int, int, int]) -> Image.Image:
    a = np.asarray(rgba)
    alpha = a[..., 3:4].astype(np.uint32)
    if alpha.min() == 255:
        fixes.append(f"dropped an alpha channel that is fully opaque ({mode} -> RGB)")
        return Image.fromarray(np.ascontiguousarray(a[..., :3]), "RGB")
    bg = np.asarray(background, dtype=np.uint32).reshape(1, 1, 3)
    # Integer blend with rounding: out = (fg * a + bg * (255 - a)) / 255, exact for a in {0, 255}.
    out = (a[..., :3].astype(np.uint32) * alpha + bg * (255 - alpha) + 127) // 255
    transparent = float((alpha < 255).mean())
    fixes.append(f"composited transparency ({mode}, {transparent:.0%} of pixels not opaque) on background "
                 f"{tuple(int(c) for c in background)}")
    return Image.fromarray(out.astype(np.uint8), "RGB")


# The IJG standard luminance table (natural order, as Pillow reports quantization tables) at quality 50.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def estimate_jpeg_quality(quantization) -> int | None:
    """Estimate the IJG quality (1-100) a JPEG was saved with from its luminance quantization table.

    Encoders that follow libjpeg scale the standard table by 5000/q (q < 50) or 200 - 2q (q >= 50); the
    mean ratio to the standard table inverts that. Custom tables (cameras, Photoshop) give a rough but
    still monotonic estimate. None when the file carries no table.
    """
    if not quantization:
        return None
    table = np.asarray(list(quantization.get(0, next(iter(quantization.values())))), dtype=np.float64)
    if table.size != 64:
        return None
    scale = float(np.mean(table * 100.0 / _STD_LUMA))
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return int(np.clip(round(quality), 1, 100))
