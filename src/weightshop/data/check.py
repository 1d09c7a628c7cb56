"""`check_dataset`: turn the folder a user hands over into a checked manifest, saying plainly what is wrong.

Every image gets a verdict:

* ok       - used as is;
* fixed    - used after a recorded conversion (rotation, colour mode, transparency, first frame);
* warning  - used, but something deserves a look (size, aspect, blur, JPEG artefacts, text, repeated mark,
             near duplicate, caption problems);
* rejected - not used: unreadable, truncated, empty, not an image, over the pixel limit, missing, too small
             for any bucket, or an exact duplicate.

Duplicate policy: exact duplicates (same decoded pixels, whether or not the files are byte-identical) are
*rejected* except the one kept, because a second copy only doubles that image's weight in training. Near
duplicates get a *warning*: they are often deliberate variations (a crop, an edit) and only the user can tell.
Two rules find them: the perceptual hash within its threshold (exact-ish copies), and image features confirmed
by the pixels (`duplicates`: a crop, a rescale, a recompression; `features=False` skips it). In every case the
image kept is the one with the most pixels, then the first by file name. One bad file never stops the run.

Repeated marks: two rules, both warnings. The cell rule (`marks`) finds a pattern that matches closely in the
outer band of the frame; the persistence map (`persistence`) finds an overlay that several images share at one
place, however faint and whatever it shows (text, a logo, a semi-transparent stamp).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from weightshop.data import duplicates as dup
from weightshop.data import marks as marks_mod
from weightshop.data import persistence
from weightshop.data import quality as q
from weightshop.data.buckets import ResizePolicy, assign_bucket, bucket_sizes
from weightshop.data.captions import KREA2_CAPTION_TOKENS, caption_reasons, caption_stats, count_tokens
from weightshop.data.images import DEFAULT_MAX_PIXELS, ImageRejected, load_image
from weightshop.data.manifest import MANIFEST_VERSION, manifest_hash, new_item, recount, write_manifest
from weightshop.data.sources import read_source
from weightshop.io import sha256_file
from weightshop.models.spec import KREA2

__all__ = ["check_dataset", "write_manifest", "manifest_hash"]


def check_dataset(source, *, target_area: int = KREA2.default_size ** 2, multiple: int = KREA2.size_multiple(), trigger: str | None = None,
                  tokenizer=None, max_caption_tokens: int = KREA2_CAPTION_TOKENS, near_duplicate_threshold: int = 6,
                  ocr: bool | Callable = True, min_side: int | None = None, max_aspect: float = 4.0,
                  progress: Callable[[int, int, str], None] | None = None,
                  alpha_background: tuple[int, int, int] = (255, 255, 255), max_pixels: int = DEFAULT_MAX_PIXELS,
                  upscale: bool = False, blur_threshold: float = q.BLUR_THRESHOLD,
                  jpeg_quality_warn: int = q.JPEG_QUALITY_WARN, features=True) -> dict:
    """Check every image under `source` (folder or metadata file) and return the dataset manifest.

    `ocr` is True (RapidOCR when installed; reported as unavailable otherwise), False, or a callable
    image -> [{"text", "confidence", "box"}]. `features` is True (the judge layer's EfficientNet-Lite0 features
    find near duplicates that a crop, rescale or recompression hides from the perceptual hash), False (skip them:
    faster), or any object with `embed(images) -> (N, D) array`. `progress(done, total, file)` is called after
    each image.
    """
    started = time.monotonic()
    src = read_source(source)
    buckets = bucket_sizes(target_area, multiple, max_aspect)
    policy = ResizePolicy(resize="allow-upscale" if upscale else "downscale-only", upscale=upscale,
                          alpha_background=tuple(int(c) for c in alpha_background))
    ocr_fn, ocr_note = _resolve_ocr(ocr)
    embedder, feature_note = _resolve_features(features)
    items, rejects, warns, maps = [], {}, {}, {}
    kept = {"frames": {}, "thumbs": {}, "embeddings": {}, "pending": {}, "embedder": embedder,
            "threads": 1 if len(src.items) <= dup.FEATURE_ONE_THREAD else None}
    for n, entry in enumerate(src.items):
        item = new_item(entry.file)
        item.update(caption=entry.caption, caption_source=entry.caption_source, extra=entry.extra)
        rejects[n], warns[n] = list(entry.problems), list(entry.notes)
        if not entry.problems:
            try:
                _inspect(entry.path, item, rejects[n], warns[n], maps, n, buckets=buckets, policy=policy,
                         multiple=multiple, max_pixels=max_pixels, max_aspect=max_aspect, min_side=min_side,
                         blur_threshold=blur_threshold, jpeg_quality_warn=jpeg_quality_warn, ocr_fn=ocr_fn,
                         kept=kept)
            except ImageRejected as exc:
                rejects[n].append(exc.reason)
            except OSError as exc:  # the file vanished or became unreadable between listing and reading
                rejects[n].append(f"cannot be read: {exc.strerror or exc}")
            except Exception as exc:  # noqa: BLE001 - one odd file must not end the run; say what happened
                rejects[n].append(f"could not be checked ({type(exc).__name__}: {exc})")
        if item["caption"] is not None:
            item["caption_tokens"] = count_tokens(item["caption"], tokenizer)
        items.append(item)
        if progress:
            progress(n + 1, len(src.items), entry.file)

    _embed_pending(kept)
    feature_note = kept.get("failed") or feature_note
    duplicates = _exact_duplicates(items, rejects) + _near_duplicates(items, rejects, warns, near_duplicate_threshold)
    if kept["embedder"] is not None and kept["embeddings"]:
        duplicates += _feature_duplicates(items, rejects, warns, kept, duplicates)
    mark_list, mark_note = _repeated_marks(items, rejects, maps, duplicates)
    persist = _persistent_marks(items, rejects, warns, kept["frames"], duplicates, mark_list)
    for n, item in enumerate(items):
        if not rejects[n]:
            warns[n] += caption_reasons(item, trigger=trigger, max_tokens=max_caption_tokens,
                                        exact=tokenizer is not None)
        item["reasons"] = rejects[n] + warns[n]
        item["verdict"] = "rejected" if rejects[n] else "warning" if warns[n] else "fixed" if item["fixes"] else "ok"
        if rejects[n]:
            item["bucket"] = None
    manifest = {
        "version": MANIFEST_VERSION, "source": str(src.root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": {"area": target_area, "multiple": multiple, "max_aspect": max_aspect},
        "trigger": trigger, "policy": policy.to_dict(), "items": items, "duplicates": duplicates,
        "buckets": {}, "marks": mark_list, "counts": {}, "stats": {},
    }
    recount(manifest)
    usable = [i for i in items if i["verdict"] != "rejected"]
    sizes = [(i["width"], i["height"]) for i in items if i["width"]]
    manifest["stats"] = {
        "images": len(items), "readable": len(sizes), "usable": len(usable),
        "resolution": ({"min_side": min(min(s) for s in sizes), "max_side": max(max(s) for s in sizes),
                        "median_megapixels": round(float(np.median([w * h for w, h in sizes])) / 1e6, 3)}
                       if sizes else None),
        "captions": caption_stats(usable, trigger=trigger, max_tokens=max_caption_tokens, exact=tokenizer is not None),
        "ocr": {"enabled": ocr_fn is not None, "backend": ocr_note,
                "images_with_text": sum(1 for i in items if i["ocr"])},
        "marks": mark_note,
        "persistence": persist,
        "near_duplicates": ("imagehash.phash, 64 bits" if any(i["phash"] for i in items)
                            else "skipped: no perceptual hashes (is imagehash installed?)"),
        "near_duplicates_features": feature_note,
        "bucket_count": len(buckets),
        "thresholds": {
            "max_pixels": max_pixels, "max_aspect": max_aspect, "min_side": min_side,
            "blur_laplacian_variance": blur_threshold, "blur_work_area": q.BLUR_WORK_AREA,
            "uniform_gray_std": q.UNIFORM_STD, "jpeg_quality": jpeg_quality_warn,
            "near_duplicate_hamming": near_duplicate_threshold, "phash_bits": 64,
            "ocr_min_confidence": q.OCR_MIN_CONFIDENCE, "ocr_min_chars": q.OCR_MIN_CHARS,
            "mark_correlation": marks_mod.MARK_CORRELATION,
            "mark_single_cell_correlation": marks_mod.MARK_SINGLE_CELL_CORRELATION,
            "mark_min_images": marks_mod.MARK_MIN_IMAGES, "max_caption_tokens": max_caption_tokens,
            "feature_cosine": dup.FEATURE_COSINE if kept["embedder"] is not None else None,
            "feature_aligned_pixels": dup.ALIGNED_NCC if kept["embedder"] is not None else None,
            "persistence_pair_z": persistence.PERSIST_PAIR_Z, "persistence_group_z": persistence.PERSIST_GROUP_Z,
            "persistence_member_z": persistence.PERSIST_MEMBER_Z,
        },
        "source": {"metadata": src.metadata.name if src.metadata else None, "problems": src.problems,
                   "ignored_files": src.ignored},
        "elapsed_s": round(time.monotonic() - started, 2),
    }
    return manifest


def _resolve_ocr(ocr) -> tuple[Callable | None, str | None]:
    if callable(ocr):
        return ocr, getattr(ocr, "__name__", "custom")
    if not ocr:
        return None, "disabled"
    fn, note = q.rapidocr_backend()
    return fn, note


def _resolve_features(features):
    """(embedder or None, what the manifest says about the feature rule)."""
    if features is False or features is None:
        return None, "disabled"
    if features is not True:
        return features, getattr(features, "name", type(features).__name__)
    try:
        from weightshop.judge.features import feature_extractor

        fx = feature_extractor()
    except Exception as exc:  # noqa: BLE001 - missing weights or torch: the pHash rule still runs; say why not this
        return None, f"skipped: image features unavailable ({type(exc).__name__}: {exc})"
    return fx, (f"{fx.name} features at {dup.FEATURE_INPUT} px (cosine >= {dup.FEATURE_COSINE}), confirmed by aligned "
                f"pixels (>= {dup.ALIGNED_NCC})")


def _embed_pending(kept: dict, force: bool = True) -> None:
    """Embed the images waiting for features (all of them, or once a batch is full); a failure turns the rule off
    with a note (kept["failed"]) rather than ending the check."""
    pending = kept["pending"]
    if kept["embedder"] is None or not pending or (not force and len(pending) < dup.FEATURE_BATCH):
        return
    idx = sorted(pending)
    try:
        vectors = dup.embed(kept["embedder"], [pending[i] for i in idx], threads=kept.get("threads"))
    except Exception as exc:  # noqa: BLE001
        kept["embedder"], kept["embeddings"] = None, {}
        kept["failed"] = f"skipped: feature extraction failed ({type(exc).__name__}: {exc})"
    else:
        kept["embeddings"].update(zip(idx, vectors))
    pending.clear()


def _inspect(path: Path, item: dict, rejects: list, warns: list, maps: dict, n: int, *, buckets, policy,
             multiple, max_pixels, max_aspect, min_side, blur_threshold, jpeg_quality_warn, ocr_fn, kept) -> None:
    item["bytes"] = path.stat().st_size
    item["sha256"] = sha256_file(path)
    loaded = load_image(path, alpha_background=policy.alpha_background, max_pixels=max_pixels)
    image, info = loaded.image, loaded.info
    w, h = image.size
    item.update(width=w, height=h, mode=info["mode"], format=info["format"], fixes=loaded.fixes,
                pixel_sha256=q.pixel_sha256(image), phash=q.phash_hex(image))
    std, sharp = q.gray_std(image), q.laplacian_variance(image)
    item["measures"] = {"sharpness": round(sharp, 1), "gray_std": round(std, 2),
                        "jpeg_quality": info.get("jpeg_quality"), "frames": info["frames"]}
    choice = assign_bucket(w, h, buckets, upscale=policy.upscale, multiple=multiple)
    item["bucket"] = list(choice.bucket) if choice.bucket else None
    if choice.bucket is None:
        rejects.append(choice.reason)
        return
    if choice.reduced:
        warns.append(f"too small for the target resolution: {choice.reason}")
    if min_side and min(w, h) < min_side:
        warns.append(f"too small: shorter side {min(w, h)} px < {min_side} px")
    aspect = max(w / h, h / w)
    if aspect > max_aspect:
        warns.append(f"extreme aspect ratio {aspect:.2f}:1 (> {max_aspect:g}:1); its "
                     f"{choice.bucket[0]}x{choice.bucket[1]} bucket crops away {1 - max_aspect / aspect:.0%} of it")
    quality = info.get("jpeg_quality")
    if quality is not None and quality < jpeg_quality_warn:
        warns.append(f"heavy JPEG artefacts: estimated quality {quality} (< {jpeg_quality_warn}) from its "
                     f"quantization tables")
    if std < q.UNIFORM_STD:
        warns.append(f"nearly uniform image (grey-level std {std:.1f} < {q.UNIFORM_STD:g}): blank or solid frame?")
    elif sharp < blur_threshold:
        warns.append(f"blurry or very smooth: Laplacian variance {sharp:.0f} (< {blur_threshold:g} at "
                     f"{int(q.BLUR_WORK_AREA ** 0.5)}^2 px)")
    if ocr_fn is not None:
        try:
            found = ocr_fn(image)
        except Exception as exc:  # noqa: BLE001 - OCR trouble is a note, not a verdict
            warns.append(f"OCR failed on this image ({type(exc).__name__}: {exc})")
            found = []
        item["ocr"] = found
        if found:
            shown = ", ".join(f"{d['text']!r} ({d['confidence']:.2f})" for d in found[:5])
            warns.append(f"text detected (OCR): {shown}{' ...' if len(found) > 5 else ''}: watermark, caption or "
                         f"sign? The LoRA will learn to draw it")
    maps[n] = marks_mod.mark_map(image)
    kept["frames"][n] = persistence.frames(image)
    if kept["embedder"] is not None:
        kept["thumbs"][n] = dup.thumbnail(image)
        kept["pending"][n] = dup.feature_copy(image)
        _embed_pending(kept, force=False)


def _keep_order(items: list[dict], idx: list[int]) -> list[int]:
    """Kept image first: most pixels, then file name."""
    return sorted(idx, key=lambda i: (-(items[i]["width"] * items[i]["height"]), items[i]["file"]))


def _exact_duplicates(items, rejects) -> list[dict]:
    groups: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        if item["pixel_sha256"]:
            groups.setdefault(item["pixel_sha256"], []).append(n)
    out = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        kept, *others = _keep_order(items, idx)
        for o in others:
            same_file = items[o]["sha256"] == items[kept]["sha256"]
            items[o]["duplicate_of"] = items[kept]["file"]
            rejects[o].append(f"exact duplicate of {items[kept]['file']} "
                              f"({'identical file' if same_file else 'same pixels, different file'})")
        out.append({"kept": items[kept]["file"], "others": [items[o]["file"] for o in others], "kind": "exact",
                    "distance": 0, "method": "pixels"})
    return out


def _near_duplicates(items, rejects, warns, threshold: int) -> list[dict]:
    idx = [n for n, item in enumerate(items) if item["phash"] and not rejects[n]]
    if len(idx) < 2:
        return []
    hashes = np.array([int(items[n]["phash"], 16) for n in idx], dtype=np.uint64)
    dist = _popcount(hashes[:, None] ^ hashes[None, :])
    parent = list(range(len(idx)))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(*np.nonzero(np.triu(dist <= threshold, k=1))):
        parent[find(int(a))] = find(int(b))
    groups: dict[int, list[int]] = {}
    for k in range(len(idx)):
        groups.setdefault(find(k), []).append(k)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        order = _keep_order(items, [idx[k] for k in members])
        pos = {idx[k]: k for k in members}
        kept, others = order[0], order[1:]
        distances = {o: int(dist[pos[kept], pos[o]]) for o in others}
        for o in others:
            items[o]["duplicate_of"] = items[kept]["file"]
            warns[o].append(f"near duplicate of {items[kept]['file']} (perceptual hash distance {distances[o]} "
                            f"<= {threshold} of 64 bits); keep both only if the difference matters")
        out.append({"kept": items[kept]["file"], "others": [items[o]["file"] for o in others], "kind": "near",
                    "distance": max(distances.values()), "method": "phash"})
    return out


def _feature_duplicates(items, rejects, warns, kept, known) -> list[dict]:
    """Near duplicates by image features confirmed by aligned pixels (`duplicates.feature_pairs`), among usable
    images not already in a duplicate group; grouped like the perceptual-hash ones (the kept image has the most
    pixels). The group records its weakest pair's cosine and aligned similarity, and the perceptual-hash distance
    between the kept image and the farthest other (the number the hash rule would have judged)."""
    idx = [n for n in sorted(kept["embeddings"]) if not rejects[n] and n in kept["thumbs"]]
    if len(idx) < 2:
        return []
    group_of = {f: g for g, group in enumerate(known) for f in [group["kept"], *group["others"]]}

    def already(a: int, b: int) -> bool:  # the same known group (exact or perceptual hash) already says it
        ga = group_of.get(items[idx[a]]["file"])
        return ga is not None and ga == group_of.get(items[idx[b]]["file"])

    pairs = dup.feature_pairs(np.stack([kept["embeddings"][n] for n in idx]), [kept["thumbs"][n] for n in idx],
                              skip=already)
    parent = {k: k for k in range(len(idx))}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    score = {}
    for a, b, cos, ncc in pairs:
        parent[find(a)] = find(b)
        score[(a, b)] = score[(b, a)] = (cos, ncc)
    groups: dict[int, list[int]] = {}
    for a, b, _, _ in pairs:
        for k in (a, b):
            groups.setdefault(find(k), [])
            if k not in groups[find(k)]:
                groups[find(k)].append(k)
    out = []
    for members in groups.values():
        pos = {idx[k]: k for k in members}
        kept_n, *others = _keep_order(items, list(pos))
        worst = (1.0, 1.0)
        for o in others:
            cos, ncc = score.get((pos[kept_n], pos[o])) or max(
                (score[(pos[o], k)] for k in members if (pos[o], k) in score), key=lambda t: t[0])
            worst = (min(worst[0], cos), min(worst[1], ncc))
            items[o]["duplicate_of"] = items[kept_n]["file"]
            warns[o].append(f"near duplicate of {items[kept_n]['file']} (features, cosine {cos:.2f}; pixels aligned "
                            f"{ncc:.2f}): a crop, rescale or re-save of the same picture? Keep both only if the "
                            f"difference matters")
        distance = max((_phash_distance(items[kept_n], items[o]) for o in others), default=None, key=lambda d: d or 0)
        out.append({"kept": items[kept_n]["file"], "others": [items[o]["file"] for o in others], "kind": "near",
                    "distance": distance, "method": "features", "cosine": worst[0], "aligned": worst[1]})
    return out


def _phash_distance(a: dict, b: dict) -> int | None:
    if not a["phash"] or not b["phash"]:
        return None
    return int(bin(int(a["phash"], 16) ^ int(b["phash"], 16)).count("1"))


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(int)
    bits = np.unpackbits(x.astype(">u8").view(np.uint8).reshape(*x.shape, 8), axis=-1)
    return bits.sum(-1).astype(int)


def _repeated_marks(items, rejects, maps, duplicates) -> tuple[list[dict], str]:
    """The cell rule's marks (`marks.find_repeated_marks`); their warnings are added once the persistence map has
    confirmed them (`_persistent_marks`)."""
    idx = [n for n in sorted(maps) if not rejects[n]]
    if len(idx) > marks_mod.MARK_MAX_IMAGES:
        return [], f"skipped: more than {marks_mod.MARK_MAX_IMAGES} usable images"
    if len(idx) < marks_mod.MARK_MIN_IMAGES:
        return [], f"skipped: fewer than {marks_mod.MARK_MIN_IMAGES} usable images"
    pos = {items[n]["file"]: k for k, n in enumerate(idx)}
    exclude = set()
    for group in duplicates:
        files = [f for f in [group["kept"], *group["others"]] if f in pos]
        exclude |= {(min(pos[a], pos[b]), max(pos[a], pos[b])) for a in files for b in files if a != b}
    found = marks_mod.find_repeated_marks([maps[n] for n in idx], [items[n]["file"] for n in idx], exclude)
    for mark in found:
        mark["method"] = "cells"
    return found, f"compared {len(idx)} images"


def _cells_reason(mark: dict, files: list[str]) -> str:
    box = mark["box"]
    return (f"repeated mark: the same pattern sits at the {marks_mod.describe_box(box)} (x {box[0]:.2f}-{box[2]:.2f}, "
            f"y {box[1]:.2f}-{box[3]:.2f} of the frame) in {len(files)} images: watermark, logo or signature? The "
            f"LoRA will learn it")


def _duplicate_pairs(duplicates, pos: dict) -> set[tuple[int, int]]:
    pairs = set()
    for group in duplicates:
        files = [f for f in [group["kept"], *group["others"]] if f in pos]
        pairs |= {(min(pos[a], pos[b]), max(pos[a], pos[b])) for a in files for b in files if a != b}
    return pairs


def _persistent_marks(items, rejects, warns, frames, duplicates, mark_list) -> dict:
    """Run the persistence map over the usable images and settle the marks with the cell rule's (`mark_list`, edited
    in place), then warn the images:

    * a mark both rules find is one mark (it gains the persistence evidence and any images only the map saw);
    * a mark only the persistence map finds is added;
    * a mark only the cell rule finds is not confirmed: it is recorded (stats "unconfirmed", shown in the report) but
      warns no image. On the 32 shapes-world domain sets (1152 images) the cell rule alone flagged 29 images that
      carry no mark, the persistence map none, and every planted mark is found by both (docs/curation.md).

    Returns what the manifest's stats record."""
    idx = [n for n in sorted(frames) if not rejects[n]]
    by_file = {items[n]["file"]: n for n in idx}
    if len(idx) < persistence.PERSIST_MIN_IMAGES:
        for mark in mark_list:  # (the cell rule needs as many images: nothing to settle)
            for f in mark["files"]:
                warns[by_file[f]].append(_cells_reason(mark, mark["files"]))
        return {"note": f"skipped: fewer than {persistence.PERSIST_MIN_IMAGES} usable images"}
    names = [items[n]["file"] for n in idx]
    sizes = [(items[n]["width"], items[n]["height"]) for n in idx]
    found = persistence.find_marks([frames[n] for n in idx], names, sizes,
                                   _duplicate_pairs(duplicates, {f: k for k, f in enumerate(names)}))
    cells = [m for m in mark_list if m.get("method") == "cells"]
    settled = []
    for mark in found["marks"]:
        boxes, anchor = mark["boxes"], mark["anchor"]
        box = mark["box"] if anchor == "frame" else [round(float(np.median([b[k] for b in boxes.values()])), 4)
                                                     for k in range(4)]
        evidence = {"anchor": anchor, "box": mark["box"], "score": mark["score"], "boxes": boxes,
                    "member_z": mark["member_z"]}
        twin = next((m for m in cells if len(set(m["files"]) & set(mark["files"])) >= 2 and _overlap(m["box"], box)),
                    None)
        if twin is not None:
            cells.remove(twin)
            cell_files = twin["files"]
            new = sorted(set(mark["files"]) - set(cell_files))
            twin.update(files=sorted(set(cell_files) | set(mark["files"])), method="cells+persistence",
                        cells_files=cell_files, persistence=evidence)
            settled.append(twin)
            for f in cell_files:
                warns[by_file[f]].append(_cells_reason(twin, twin["files"]))
        else:
            new = mark["files"]
            settled.append({"box": box, "files": mark["files"], "score": mark["score"], "method": "persistence",
                            "persistence": evidence})
        where = marks_mod.describe_box(box)
        place = (f"at the {where} (x {box[0]:.2f}-{box[2]:.2f}, y {box[1]:.2f}-{box[3]:.2f} of the frame)"
                 if anchor == "frame" else
                 f"in the {where} corner (within a quarter of the width of it)" if anchor == "corner-width" else
                 f"in the {where} corner (within {persistence.CORNER_PIXELS} px of it)")
        for f in new:
            warns[by_file[f]].append(
                f"repeated mark: an overlay shared {place} by {len(settled[-1]['files'])} images (persistence map, z "
                f"{mark['score']:.1f}; text or not, however faint): watermark, logo or stamp? The LoRA will learn it")
    mark_list[:] = sorted(settled, key=lambda m: (-len(m["files"]), m["box"]))
    return {"note": f"compared {len(idx)} images; anchors: {', '.join(found['anchors'])}", "anchors": found["anchors"],
            "maps": found["maps"], "unconfirmed": cells}


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
