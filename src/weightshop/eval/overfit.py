"""The two classic LoRA failures, and two quieter ones, checked on a LoRA's runs against the base's runs.

- memorisation: generations whose nearest training image (EfficientNet-Lite0 features) is a near copy, confirmed
  geometrically: the generation, rescaled, slid over that training image (normalised cross-correlation) must match
  it as a cropped, rescaled copy does. ORB keypoints + RANSAC were tried first and find too few keypoints on flat
  renders (nano's 64 px shapes: 0 inliers on some true copies). Both thresholds are calibrated on augmented
  copies of the training images themselves (crop, rescale, JPEG) against the other training images, so they fit
  the domain at hand.
- learned watermark: text found by OCR on prompts that ask for none, against the base on the same prompts; and a
  mark persisting at the same place across the LoRA's images that the base's do not have.
- concept bleed: the concept on prompts without the trigger, against the base.
- diversity collapse: the spread of the features across seeds of one prompt, against the base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

MATCH_SIDE = 128  # images are compared geometrically at this side
BLEED_POINTS = 10.0  # concept on no-trigger prompts above the base's by more than this many points: bleed
DIVERSITY_KEPT = 0.6  # below this share of the base's diversity across seeds: collapse
OCR_POINTS = 10.0  # text on no-text prompts above the base's rate by more than this many points: a learned mark


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy as it reaches a dataset again: cropped 2-8 % per side, rescaled 0.6-1.2x, JPEG 60-85."""
    import io

    w, h = image.size
    f = rng.uniform(0.02, 0.08, size=4)
    box = (int(w * f[0]), int(h * f[1]), w - int(w * f[2]), h - int(h * f[3]))
    out = image.convert("RGB").crop(box)
    scale = rng.uniform(0.6, 1.2)
    out = out.resize((max(8, int(out.width * scale)), max(8, int(out.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=int(rng.integers(60, 86)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def aligned_match(copy: Image.Image, original: Image.Image, side: int = MATCH_SIDE) -> float:
    """How well `copy` is a cropped and rescaled piece of `original`: the best normalised cross-correlation of the
    copy, shrunk to 80-100 % of the original's side, slid over the original (OpenCV's matchTemplate). 1 is the same
    pixels; distinct pictures of one domain stay well below (calibrated: `calibrate_copies`)."""
    import cv2

    def grey(im: Image.Image, size: int) -> np.ndarray:
        return np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32)

    target, best = grey(original, side), 0.0
    for scale in np.linspace(0.80, 1.0, 11):
        template = grey(copy, max(8, int(round(side * scale))))
        if template.std() > 1e-3:
            best = max(best, float(cv2.matchTemplate(target, template, cv2.TM_CCOEFF_NORMED).max()))
    return best


@dataclass(frozen=True)
class CopyThresholds:
    cosine: float  # feature similarity at or above which a generation is a copy candidate
    match: float  # aligned_match at or above which the candidate is confirmed
    copies_caught: float  # on the calibration's augmented copies, the share both thresholds accept
    others_passed: float  # on pairs of different training images, the share both thresholds accept


def calibrate_copies(train: list[Image.Image], features, seed: int = 0) -> CopyThresholds:
    """Thresholds from the training set itself: each image's augmented copy against it (must be caught) and its
    nearest other training image (must not). `features(images) -> (N, D)` is the judge layer's embedding."""
    if len(train) < 2:
        raise ValueError("calibrating the copy detector needs at least 2 training images")
    rng = np.random.default_rng(seed)
    copies = [augment(im, rng) for im in train]
    ft, fc = features(train), features(copies)
    ft_n = ft / np.linalg.norm(ft, axis=1, keepdims=True)
    fc_n = fc / np.linalg.norm(fc, axis=1, keepdims=True)
    copy_cos = np.sum(ft_n * fc_n, axis=1)
    sims = ft_n @ ft_n.T
    np.fill_diagonal(sims, -np.inf)
    other_cos = sims.max(1)
    # every other training image, not only the nearest by features: the confirmation must reject them all
    copy_match = np.array([aligned_match(c, t) for c, t in zip(copies, train)])
    other_match = np.array([max(aligned_match(train[j], t) for j in range(len(train)) if j != i)
                            for i, t in enumerate(train)])
    cosine = float(np.percentile(copy_cos, 5))  # a loose first pass: the features of one domain lie close together
    match = _split(copy_match, other_match)
    caught = float(np.mean((copy_cos >= cosine) & (copy_match >= match)))
    passed = float(np.mean((other_cos >= cosine) & (other_match >= match)))
    return CopyThresholds(cosine, match, caught, passed)


def _split(positives: np.ndarray, negatives: np.ndarray) -> float:
    """A threshold between what must pass (positives) and what must not: midway between the positives' 5th
    percentile and the negatives' 95th when they separate, else the positives' 5th percentile."""
    low, high = float(np.percentile(positives, 5)), float(np.percentile(negatives, 95))
    return (low + high) / 2 if low > high else low


def memorisation(generated: list[Image.Image], gen_features: np.ndarray, train: list[Image.Image],
                 train_features: np.ndarray, thresholds: CopyThresholds) -> dict:
    """Generations that are near copies of a training image: candidates by feature similarity, each confirmed by
    the aligned match against that training image."""
    from weightshop.judge.stats import nearest

    index, cosine = nearest(gen_features, train_features)
    found = []
    for i, (j, c) in enumerate(zip(index, cosine)):
        if c >= thresholds.cosine:
            score = aligned_match(generated[i], train[int(j)])
            if score >= thresholds.match:
                found.append({"image": i, "training_image": int(j), "cosine": float(c), "match": score})
    return {"rate": len(found) / max(1, len(generated)), "copies": found, "thresholds": asdict(thresholds),
            "mean_nearest_similarity": float(np.mean(cosine)) if len(cosine) else None}


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection over the smaller box, of two [x0, y0, x1, y1] boxes in 0..1."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])) or 1e-9
    return w * h / smaller


def learned_marks(lora_images: list[Image.Image], base_images: list[Image.Image],
                  train_images: list[Image.Image] | None = None) -> dict:
    """Overlays persisting at one place across the LoRA's images (data.persistence: whatever they show, text or
    not) that the base's images of the same prompts and seeds do not have. With the training images, only those
    that also persist there, at the same place, count: the LoRA learned them from its data. Without that check the
    concept itself drawn at one place in a few images passes for a mark (measured on the demo's star LoRA: a star
    in the upper right of 3 of 72 images)."""
    from weightshop.data.persistence import find_marks, frames

    def marks(images: list[Image.Image]) -> list[dict]:
        """Each mark with its box in image coordinates (0..1), taken from its first image."""
        if len(images) < 3:
            return []
        names = [str(i) for i in range(len(images))]
        found = find_marks([frames(im) for im in images], names, [im.size for im in images])["marks"]
        return [{**m, "box": m["boxes"][m["files"][0]]} for m in found]

    lora, base = marks(lora_images), marks(base_images)
    new = [m for m in lora if not any(_overlap(m["box"], b["box"]) > 0.5 for b in base)]
    out = {"marks": [{"box": m["box"], "images": len(m["files"])} for m in new], "base_marks": len(base)}
    source = ""
    if train_images is not None:
        in_train = marks(train_images)
        out["training_marks"] = [{"box": m["box"], "images": len(m["files"])} for m in in_train]
        new = [m for m in new if any(_overlap(m["box"], t["box"]) > 0.5 for t in in_train)]
        if new:
            hits = max(len(t["files"]) for t in in_train if _overlap(new[0]["box"], t["box"]) > 0.5)
            source = f", as in {hits} of the {len(train_images)} training images"
    out["flag"] = bool(new)
    if new:
        best = max(new, key=lambda m: len(m["files"]))
        x0, y0, x1, y1 = (round(v, 2) for v in best["box"])
        out["reason"] = (f"a mark persists at ({x0}, {y0})-({x1}, {y1}) of the frame in {len(best['files'])} of "
                         f"{len(lora_images)} images, not in the base's{source}")
    return out


def mean_on(run, metric: str, tag: str) -> float | None:
    values = list(run.values(metric, tag).values())
    return float(np.mean(values)) if values else None


def findings(lora_run, base_run, concept_metric: str | None, memo: dict | None = None,
             persistence: dict | None = None) -> dict:
    """Every check's figures and flags for a LoRA's run against the base's run on the same suite and seeds."""
    out: dict = {"flags": []}
    if memo is not None:
        out["memorisation"] = memo
        if memo["copies"]:
            out["flags"].append(f"memorising: {len(memo['copies'])} of the generations are near copies of training "
                                f"images (feature cosine >= {memo['thresholds']['cosine']:.3f}, confirmed by an aligned "
                                f"match >= {memo['thresholds']['match']:.3f})")
    lora_ocr, base_ocr = lora_run.set_metrics.get("ocr_text_rate"), base_run.set_metrics.get("ocr_text_rate")
    out["ocr_text_rate"] = {"lora": lora_ocr, "base": base_ocr}
    if lora_ocr is not None and base_ocr is not None and 100 * (lora_ocr - base_ocr) > OCR_POINTS:
        out["flags"].append(f"learned text or watermark: OCR finds text in {100 * lora_ocr:.0f} % of the images of "
                            f"no-text prompts, {100 * base_ocr:.0f} % without the LoRA")
    if persistence is not None:
        out["persistence"] = persistence
        if persistence.get("flag"):
            out["flags"].append(f"learned watermark: {persistence['reason']}")
    if concept_metric:
        lora_bleed, base_bleed = mean_on(lora_run, concept_metric, "no-trigger"), mean_on(base_run, concept_metric,
                                                                                           "no-trigger")
        out["concept_bleed"] = {"lora": lora_bleed, "base": base_bleed, "metric": concept_metric}
        if lora_bleed is not None and base_bleed is not None and 100 * (lora_bleed - base_bleed) > BLEED_POINTS:
            out["flags"].append(f"concept bleed: the concept shows in {100 * lora_bleed:.0f} % of the images of "
                                f"prompts without the trigger, {100 * base_bleed:.0f} % without the LoRA")
    lora_div, base_div = lora_run.set_metrics.get("diversity"), base_run.set_metrics.get("diversity")
    out["diversity"] = {"lora": lora_div, "base": base_div}
    if lora_div is not None and base_div and lora_div < DIVERSITY_KEPT * base_div:
        out["flags"].append(f"diversity collapse: across seeds the LoRA's images vary {lora_div / base_div:.0%} as "
                            "much as the base's")
    return out
