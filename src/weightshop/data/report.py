"""What the user reads after a check: one self-contained HTML page, and rows for the CLI's table."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weightshop.data import persistence
from weightshop.data.images import ImageRejected, load_image
from weightshop.data.manifest import manifest_hash
from weightshop.data.marks import describe_box
from weightshop.report import data_uri, table_html, write_html

THUMB = 160
_ORDER = ("rejected", "warning", "fixed", "ok")
_TITLES = {"rejected": "Rejected (not used)", "warning": "Warnings (used; worth a look)",
           "fixed": "Fixed (used after a conversion)", "ok": "OK"}
_STYLE = ("<style>.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:%dpx;font-size:12px}"
          "figure img{display:block;max-width:%dpx;max-height:%dpx;image-rendering:auto}"
          ".reason{color:#a40}.fix{color:#066}.cap{color:#444;font-style:italic}.dups{display:flex;gap:8px;"
          "align-items:flex-start;margin-bottom:12px}.kept{outline:3px solid #2a2}</style>"
          ) % (THUMB + 20, THUMB, THUMB)


def summary_rows(manifest: dict) -> list[dict]:
    """One row per item, rejected first: file, verdict, size, bucket, caption tokens, reasons and fixes."""
    rank = {v: k for k, v in enumerate(_ORDER)}
    rows = []
    for item in sorted(manifest["items"], key=lambda i: (rank.get(i["verdict"], 9), i["file"])):
        rows.append({
            "file": item["file"], "verdict": item["verdict"],
            "size": f"{item['width']}x{item['height']}" if item["width"] else "-",
            "bucket": f"{item['bucket'][0]}x{item['bucket'][1]}" if item["bucket"] else "-",
            "tokens": item["caption_tokens"] if item["caption_tokens"] is not None else "-",
            "notes": "; ".join(item["reasons"] + [f"fixed: {f}" for f in item["fixes"]]),
        })
    return rows


def write_report(manifest: dict, source: str | Path | None, out_dir: str | Path, *, name: str = "report.html") -> Path:
    """Write out_dir/report.html: thumbnails by verdict with reasons, duplicates, marks, OCR, captions, buckets."""
    root = Path(source or manifest["source"])
    background = tuple(manifest["policy"].get("alpha_background", (255, 255, 255)))
    thumbs: dict[str, Image.Image] = {}
    marked = {f for mark in manifest.get("marks") or [] for f in mark["files"]}
    crops: dict[str, Image.Image] = {}  # marked images at a working size, for the mark's median and shared residual
    for item in manifest["items"]:
        if item["width"]:
            try:
                im = load_image(root / item["file"], alpha_background=background).image
            except ImageRejected:
                continue  # changed since the check; shown without a picture
            if item["file"] in marked:
                crops[item["file"]] = im.copy()
                crops[item["file"]].thumbnail((1024, 1024), Image.Resampling.BOX)
            im.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
            thumbs[item["file"]] = im
    uris = {f: data_uri(im) for f, im in thumbs.items()}
    sections = [("Summary", _STYLE + _summary(manifest))]
    for verdict in _ORDER:
        group = [i for i in manifest["items"] if i["verdict"] == verdict]
        if group:
            body = "<div class=grid>" + "".join(_figure(i, uris.get(i["file"])) for i in group) + "</div>"
            sections.append((f"{_TITLES[verdict]}: {len(group)}", body))
    sections.append(("Duplicates", _duplicates(manifest, uris)))
    sections.append(("Repeated marks", _marks(manifest, thumbs, crops)))
    sections.append(("Text found by OCR", _ocr(manifest)))
    sections.append(("Captions", _captions(manifest)))
    sections.append(("Buckets", _buckets(manifest)))
    src = manifest["stats"].get("source", {})
    notes = src.get("problems", []) + [f"ignored (not an image or caption): {f}" for f in src.get("ignored_files", [])]
    sections.append(("Source notes", _list(notes) if notes else "<p>none</p>"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_html(out / name, f"Dataset check: {Path(manifest['source']).name}", sections)


def _esc(value) -> str:
    return html.escape(str(value))


def _list(lines, cls: str = "") -> str:
    return "<ul>" + "".join(f"<li class='{cls}'>{_esc(s)}</li>" for s in lines) + "</ul>" if lines else ""


def _summary(m: dict) -> str:
    counts = " &middot; ".join(f"{_esc(k)}: <b>{v}</b>" for k, v in m["counts"].items())
    rows = [{"field": "source", "value": m["source"]}, {"field": "created", "value": m["created"]},
            {"field": "target", "value": f"{m['target']['area']} px area, sides multiple of {m['target']['multiple']}"},
            {"field": "trigger", "value": m["trigger"] or "-"},
            {"field": "policy", "value": ", ".join(f"{k}={v}" for k, v in m["policy"].items())},
            {"field": "manifest hash", "value": manifest_hash(m)[:16]}]
    rows += [{"field": k, "value": v} for k, v in m["stats"].get("thresholds", {}).items()]
    return f"<p>{counts}</p>" + table_html(rows)


def _figure(item: dict, uri: str | None) -> str:
    img = f"<img class=thumb src='{uri}' alt='{_esc(item['file'])}'>" if uri else "<p>(no preview)</p>"
    size = f"{item['width']}x{item['height']}" if item["width"] else ""
    bucket = f" &rarr; {item['bucket'][0]}x{item['bucket'][1]}" if item["bucket"] else ""
    caption = item["caption"]
    cap = (f"<div class=cap>{_esc(caption[:200])}{'...' if len(caption) > 200 else ''}</div>" if caption
           else "<div class=cap>(no caption)</div>")
    return (f"<figure id='{_esc(item['file'])}'>{img}<figcaption><b>{_esc(item['file'])}</b> {size}{bucket}{cap}"
            f"{_list(item['reasons'], 'reason')}{_list(item['fixes'], 'fix')}</figcaption></figure>")


def _duplicates(m: dict, uris: dict) -> str:
    if not m["duplicates"]:
        return "<p>No exact or near duplicates.</p>"
    th = m["stats"].get("thresholds", {})
    parts = [f"<p>Exact: same decoded pixels (others rejected). Near, by perceptual hash: phash (64 bits) within "
             f"Hamming distance {th.get('near_duplicate_hamming')} (others warned). Near, by features: image features "
             f"(EfficientNet-Lite0) at cosine &ge; {th.get('feature_cosine')} and the pixels lining up as a crop of "
             f"each other at &ge; {th.get('feature_aligned_pixels')} (others warned): crops, rescales and re-saves the "
             f"hash misses. The kept image has the most pixels, then the first name.</p>"]
    for group in m["duplicates"]:
        cells = []
        for f in [group["kept"], *group["others"]]:
            label = "kept" if f == group["kept"] else f"{group['kind']} duplicate"
            img = f"<img class=dup src='{uris[f]}'>" if f in uris else ""
            cells.append(f"<figure class='{'kept' if f == group['kept'] else ''}'>{img}<figcaption>{_esc(label)}: "
                         f"{_esc(f)}</figcaption></figure>")
        if group.get("method") == "features":
            how = (f"near, by features: cosine {group['cosine']:.2f}, pixels aligned {group['aligned']:.2f}, "
                   f"perceptual-hash distance {group['distance']}")
        else:
            how = f"{group['kind']}, distance {group['distance']}"
        parts.append(f"<div class=dups>{''.join(cells)}<p>{_esc(how)}</p></div>")
    return "".join(parts)


def _heat(values, box: list[float] | None, anchor: str, side: int = 192) -> Image.Image:
    """The persistence map as a picture: each cell's best group score (black 0, red at the group threshold, yellow
    at twice it), the mark's box in cyan; a corner anchor's four windows are split by grey lines."""
    a = np.asarray(values, dtype=np.float32)
    top = 2 * persistence.PERSIST_GROUP_Z
    t = np.clip(a / top, 0, 1)
    rgb = np.stack([np.clip(2 * t, 0, 1), np.clip(2 * t - 1, 0, 1), np.zeros_like(t)], -1)
    im = Image.fromarray((rgb * 255).astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(im)
    if anchor != "frame":
        draw.line([side // 2, 0, side // 2, side], fill=(90, 90, 90))
        draw.line([0, side // 2, side, side // 2], fill=(90, 90, 90))
    if box:
        draw.rectangle([box[0] * side, box[1] * side, box[2] * side - 1, box[3] * side - 1], outline=(0, 220, 255),
                       width=2)
    return im


def _marks(m: dict, thumbs: dict, crops: dict | None = None) -> str:
    crops = crops or {}
    stats = m["stats"].get("persistence") or {}
    maps = stats.get("maps") or {}
    intro = ("<p>Two rules. The cell rule compares high-pass patterns cell by cell in the outer band of the frame. "
             "The persistence map asks, everywhere in the frame, whether some images agree far beyond chance at one "
             "place (an overlay, faint or not, text or not): per cell, the mean z score of the best group of images "
             f"that agree there pairwise; a group of {persistence.PERSIST_MIN_IMAGES} or more at z &ge; "
             f"{persistence.PERSIST_GROUP_Z:g} is a mark. Anchors: {_esc(', '.join(stats.get('anchors') or []))} "
             "(the whole frame; corners sized by the width; corners in pixels).</p>")
    unconfirmed = stats.get("unconfirmed") or []
    if unconfirmed:
        intro += ("<p>Cell-rule candidates the persistence map does not confirm (no image is warned for them): "
                  + "; ".join(f"{_esc(describe_box(c['box']))} in {_esc(', '.join(c['files']))} (correlation "
                              f"{c['score']})" for c in unconfirmed) + ".</p>")
    if not m.get("marks"):
        note = m["stats"].get("marks") or ""
        pictures = "".join(f"<figure><img class=pmap src='{data_uri(_heat(v, None, a))}'><figcaption>persistence map, "
                           f"{_esc(a)}</figcaption></figure>" for a, v in maps.items())
        return (intro + f"<p>No pattern recurs at the same place in {persistence.PERSIST_MIN_IMAGES} or more images "
                f"({_esc(note)}; persistence map: {_esc(stats.get('note', 'not run'))}).</p>"
                + (f"<div class=grid>{pictures}</div>" if pictures else ""))
    parts = [intro]
    for mark in m["marks"]:
        evidence = mark.get("persistence") or {}
        boxes = evidence.get("boxes") or {}
        cells = []
        for f in mark["files"]:
            if f not in thumbs:
                continue
            im = thumbs[f].copy()
            x0, y0, x1, y1 = boxes.get(f, mark["box"])
            ImageDraw.Draw(im).rectangle([x0 * im.width, y0 * im.height, x1 * im.width - 1, y1 * im.height - 1],
                                         outline=(255, 0, 0), width=2)
            cells.append(f"<figure><img class=mark src='{data_uri(im)}'><figcaption>{_esc(f)}"
                         + (f" (z {evidence['member_z'][f]})" if f in evidence.get("member_z", {}) else "")
                         + "</figcaption></figure>")
        how = {"cells": f"cell rule, correlation {mark['score']}",
               "persistence": f"persistence map, z {mark['score']}",
               "cells+persistence": f"cell rule (correlation {mark['score']}) and persistence map (z "
                                    f"{evidence.get('score')})"}.get(mark.get("method", "cells"), "")
        anchor = evidence.get("anchor", "frame")
        extra = []
        have = [f for f in mark["files"] if f in crops]
        if len(have) >= 2:
            median = persistence.median_image([crops[f] for f in have], [boxes.get(f, mark["box"]) for f in have],
                                              side=192)
            extra.append(f"<figure><img class=median src='{data_uri(median)}'><figcaption>median of the {len(have)} "
                         f"images at the mark: the scenes blur, what they share stays</figcaption></figure>")
        if anchor in maps:
            box = evidence.get("box") or (mark["box"] if anchor == "frame" else None)
            extra.append(f"<figure><img class=pmap src='{data_uri(_heat(maps[anchor], box, anchor))}'><figcaption>"
                         f"persistence map ({_esc(anchor)})</figcaption></figure>")
        parts.append(f"<p>{describe_box(mark['box'])}, box {mark['box']} (fractions of width/height), "
                     f"{len(mark['files'])} images, {_esc(how)}</p>"
                     f"<div class=grid>{''.join(cells)}</div><div class=grid>{''.join(extra)}</div>")
    return "".join(parts)


def _ocr(m: dict) -> str:
    ocr = m["stats"].get("ocr", {})
    rows = [{"file": i["file"], "text": d["text"], "confidence": d["confidence"]} for i in m["items"] for d in i["ocr"]]
    head = f"<p>OCR: {_esc(ocr.get('backend') or 'not run')}.</p>"
    return head + (table_html(rows) if rows else "<p>No text detected.</p>")


def _captions(m: dict) -> str:
    stats = m["stats"].get("captions") or {}
    tokens = stats.get("tokens") or {}
    rows = [{"measure": k, "value": v} for k, v in stats.items() if k not in ("tokens", "top_words", "by_source")]
    rows += [{"measure": f"tokens {k}", "value": v} for k, v in tokens.items()]
    rows += [{"measure": f"source {k}", "value": v} for k, v in (stats.get("by_source") or {}).items()]
    words = [{"word": w, "count": n} for w, n in stats.get("top_words", [])]
    return table_html(rows) + "<h3>Most frequent words</h3>" + table_html(words)


def _buckets(m: dict) -> str:
    rows = []
    for key, count in m["buckets"].items():
        w, h = (int(v) for v in key.split("x"))
        rows.append({"bucket": key, "images": count, "aspect": round(w / h, 3), "megapixels": round(w * h / 1e6, 3)})
    return table_html(rows)
