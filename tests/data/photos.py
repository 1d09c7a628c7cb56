"""Synthetic photo-like images and a text-free logo, for the curation checks (no real photos are available offline).

`photo_like` draws what a photo's pixels statistically look like, not a subject: a smooth two-colour gradient
(sky/ground at a random angle), 1/f ("pink") noise as clouds or terrain (natural images have a power spectrum near
1/f^2), 6-14 random ellipses and polygons (some soft-edged, as out of focus; some filled with fine texture, as
foliage or fabric), a band of high-frequency texture (grass, gravel), and sensor noise; each seed gives a different
picture. `stamp_logo` pastes a text-free emblem (a ring, a triangle inside it and a bar under it) at a corner with a
given opacity, as a photographer's or a stock site's mark is pasted. `augment` makes the near-duplicate copies the
feature rule is calibrated on (crop, rescale, JPEG, brightness).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def pink_noise(h: int, w: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """Zero-mean unit-std noise with amplitude spectrum 1/f^exponent (1: the natural-image statistics)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** exponent
    spec[0, 0] = 0
    out = np.fft.irfft2(spec, s=(h, w))
    return out / (out.std() + 1e-9)


def photo_like(w: int, h: int, seed: int) -> Image.Image:
    """A natural-looking (statistically) RGB picture of w x h, different for every seed."""
    r = np.random.default_rng([seed, 7])
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    angle = r.uniform(-0.6, 0.6) + (np.pi / 2 if r.random() < 0.8 else 0)
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    top, bottom = r.uniform(20, 235, 3), r.uniform(20, 235, 3)
    img = top[None, None] * (1 - t[..., None]) + bottom[None, None] * t[..., None]
    clouds = pink_noise(h, w, r, exponent=r.uniform(1.0, 1.4))
    img += clouds[..., None] * r.uniform(10, 35) * (0.6 + 0.4 * r.random(3))[None, None]
    base = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    for _ in range(int(r.integers(6, 15))):
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        cx, cy = r.uniform(0, w), r.uniform(0, h)
        s = r.uniform(0.04, 0.3) * max(w, h)
        if r.random() < 0.5:
            draw.ellipse([cx - s, cy - s * r.uniform(0.4, 1.0), cx + s, cy + s * r.uniform(0.4, 1.0)], fill=255)
        else:
            k = int(r.integers(3, 8))
            ang = np.sort(r.uniform(0, 2 * np.pi, k))
            rad = s * r.uniform(0.5, 1.0, k)
            draw.polygon([(cx + a * np.cos(b), cy + a * np.sin(b)) for a, b in zip(rad, ang)], fill=255)
        if r.random() < 0.4:
            layer = layer.filter(ImageFilter.GaussianBlur(r.uniform(1.5, 6)))
        colour = r.uniform(0, 255, 3)
        fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float64)
        if r.random() < 0.4:  # foliage / fabric: fine texture inside the shape
            fill = fill + pink_noise(h, w, r, exponent=0.3)[..., None] * r.uniform(15, 40)
        else:
            fill = fill + pink_noise(h, w, r, exponent=1.2)[..., None] * r.uniform(5, 15)
        shape = Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8))
        base = Image.composite(shape, base, layer)
    arr = np.asarray(base).astype(np.float64)
    if r.random() < 0.6:  # a band of grass or gravel along the bottom
        band = (np.arange(h) > h * r.uniform(0.65, 0.9))[:, None]
        arr += band[..., None] * pink_noise(h, w, r, exponent=0.2)[..., None] * r.uniform(10, 30)
    arr += r.normal(0, r.uniform(1.5, 4), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def logo_layer(side: int, colour=(255, 255, 255)) -> Image.Image:
    """A text-free emblem, side x side, opaque on transparent: a ring, a triangle inside it, a bar under it."""
    big = side * 4
    im = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    c = (*colour, 255)
    d.ellipse([big * 0.12, big * 0.05, big * 0.88, big * 0.81], outline=c, width=max(4, big // 14))
    d.polygon([(big * 0.5, big * 0.18), (big * 0.74, big * 0.62), (big * 0.26, big * 0.62)], fill=c)
    d.rectangle([big * 0.15, big * 0.87, big * 0.85, big * 0.97], fill=c)
    return im.resize((side, side), Image.Resampling.LANCZOS)


def stamp_logo(im: Image.Image, alpha: float = 0.4, corner: str = "bottom-right", size: float = 0.12,
               margin: float = 0.03, colour=(255, 255, 255), pixels: int | None = None) -> Image.Image:
    """Paste the emblem at `corner` with opacity `alpha`: its side is `size` of the image's width and its margin
    `margin` of the width (as tools that scale a mark with the picture do), or `pixels` px with a 16 px margin."""
    w, h = im.size
    side = pixels or max(8, round(size * w))
    m = 16 if pixels else round(margin * w)
    logo = logo_layer(side, colour)
    a = np.asarray(logo).astype(np.float64)
    a[..., 3] *= alpha
    logo = Image.fromarray(a.round().astype(np.uint8), "RGBA")
    x = w - side - m if "right" in corner else m
    y = h - side - m if "bottom" in corner else m
    out = im.convert("RGBA")
    out.alpha_composite(logo, (x, y))
    return out.convert("RGB")


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop_sides(im: Image.Image, frac: float) -> Image.Image:
    w, h = im.size
    dx, dy = round(w * frac), round(h * frac)
    return im.crop((dx, dy, w - dx, h - dy))


def augment(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A near-duplicate copy as they occur: crop 3-5 % per side, rescale 0.5-0.8, brightness +-6 % and contrast +-5 %,
    JPEG quality 60-80."""
    out = crop_sides(im, rng.uniform(0.03, 0.05))
    scale = rng.uniform(0.5, 0.8)
    out = out.resize((max(8, round(out.width * scale)), max(8, round(out.height * scale))), Image.Resampling.LANCZOS)
    arr = np.asarray(out).astype(np.float64)
    arr = (arr - arr.mean()) * rng.uniform(0.95, 1.05) + arr.mean() * rng.uniform(0.94, 1.06)  # contrast, brightness
    out = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    return jpeg(out, int(rng.integers(60, 81)))
