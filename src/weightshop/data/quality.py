"""Per-image quality measurements: sharpness, flatness, perceptual and pixel hashes, and OCR.

All of them are cheap, deterministic numpy/Pillow computations on a normalised working copy, so their
thresholds mean the same thing for a phone photo and for a 6000 px scan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from PIL import Image

# Sharpness is measured on a copy reduced to at most this many pixels (about 512 x 512). Laplacian variance
# falls as resolution rises (the same edge spreads over more pixels), so a fixed working area makes one
# threshold fit all sizes, and it is near the scale at which a 1 MP training crop shows detail.
BLUR_WORK_AREA = 512 * 512
# Below this variance of the 4-neighbour Laplacian (grey levels^2 at the working area) an image is called
# blurry. Sharp photos measure in the hundreds to thousands; a 2-3 px Gaussian blur of the same photo
# lands well under 100 (see tests/test_data_check.py for the synthetic calibration).
BLUR_THRESHOLD = 100.0
# Images whose grey-level standard deviation is below this are nearly uniform (blank frames, solid fills);
# sharpness means nothing for them, and they are flagged as such instead.
UNIFORM_STD = 4.0
# JPEGs estimated below this IJG quality show 8x8 blocking and ringing that a LoRA learns as texture.
# Quality 75-95 is what cameras and most sites produce; < 60 is visibly degraded at 1:1.
JPEG_QUALITY_WARN = 60
# OCR detections below this confidence are mostly texture mistaken for glyphs and are not reported.
OCR_MIN_CONFIDENCE = 0.6
# Detections with fewer letters or digits than this are dropped: a lone "O" or "C" is nearly always a
# round shape, and a watermark or caption is longer.
OCR_MIN_CHARS = 2
# OCR runs on a copy whose longer side is at most this; watermark text stays legible and it is 4x faster.
OCR_MAX_SIDE = 1024


def pixel_sha256(image: Image.Image) -> str:
    """Hash of the decoded RGB pixels and their size: equal for the same picture stored in two formats."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _work_rgb(image: Image.Image, area: int) -> np.ndarray:
    """(3, H, W) float copy at most `area` pixels. Per channel, not grey: two colours of equal luminance
    (green on grey) are one flat grey, yet a sharp edge to the eye and to the VAE."""
    # Only ever downscale: enlarging a small image would blur it and call it blurry twice (it is already
    # flagged as too small for its bucket).
    scale = min(1.0, (area / (image.width * image.height)) ** 0.5)
    size = (max(3, round(image.width * scale)), max(3, round(image.height * scale)))
    rgb = image.convert("RGB")
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.float64).transpose(2, 0, 1)


def laplacian_variance(image: Image.Image, area: int = BLUR_WORK_AREA) -> float:
    """Variance of the 4-neighbour Laplacian at a fixed working area (size-normalised), the largest over the
    RGB channels."""
    g = _work_rgb(image, area)
    lap = g[:, 1:-1, :-2] + g[:, 1:-1, 2:] + g[:, :-2, 1:-1] + g[:, 2:, 1:-1] - 4 * g[:, 1:-1, 1:-1]
    return float(lap.reshape(3, -1).var(axis=1).max())


def gray_std(image: Image.Image) -> float:
    """How far from a flat frame: the largest per-channel standard deviation of the levels."""
    return float(_work_rgb(image, 128 * 128).reshape(3, -1).std(axis=1).max())


def phash_hex(image: Image.Image) -> str | None:
    """64-bit perceptual hash (imagehash.phash) as 16 hex digits; None when imagehash is not installed."""
    try:
        import imagehash
    except ImportError:
        return None
    return str(imagehash.phash(image))


OcrBackend = Callable[[Image.Image], list[dict]]


def rapidocr_backend(threads: int | None = None) -> tuple[OcrBackend | None, str]:
    """(backend, description): RapidOCR on onnxruntime with the models its wheel ships, or (None, why not).

    The backend returns [{"text", "confidence", "box": [[x, y] x 4] in the image's pixels}] for detections
    at or above OCR_MIN_CONFIDENCE with at least OCR_MIN_CHARS letters or digits. It never touches the
    network.
    """
    try:
        from rapidocr_onnxruntime import RapidOCR
    except Exception as exc:  # noqa: BLE001 - a missing or broken optional backend is reported, not fatal
        return None, f"OCR unavailable: rapidocr-onnxruntime cannot be imported ({type(exc).__name__}: {exc})"
    # RapidOCR's default enlarges every image until its *shorter* side is 736 px, which is slow and reads
    # round shapes as "O"; capping the longer side at 960 (PaddleOCR's own default) is 2x faster here.
    kwargs = {"det_limit_type": "max", "det_limit_side_len": 960}
    if threads:
        kwargs.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    try:
        engine = RapidOCR(**kwargs)
    except Exception as exc:  # noqa: BLE001
        return None, f"OCR unavailable: RapidOCR failed to start ({type(exc).__name__}: {exc})"

    def run(image: Image.Image) -> list[dict]:
        scale = min(1.0, OCR_MAX_SIDE / max(image.size))
        work = image if scale == 1 else image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX)
        # RapidOCR follows OpenCV's BGR channel order.
        result, _ = engine(np.ascontiguousarray(np.asarray(work.convert("RGB"))[..., ::-1]))
        found = []
        for box, text, conf in result or []:
            if float(conf) < OCR_MIN_CONFIDENCE or sum(ch.isalnum() for ch in str(text)) < OCR_MIN_CHARS:
                continue
            found.append({"text": str(text), "confidence": round(float(conf), 4),
                          "box": [[round(float(x) / scale, 1), round(float(y) / scale, 1)] for x, y in box]})
        return found

    return run, "rapidocr-onnxruntime (PP-OCRv4 models shipped in the wheel)"
