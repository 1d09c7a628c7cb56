"""weightshop.data.check / report: a folder with every fault class gets the right verdicts and reasons."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from weightshop.data import (check_dataset, manifest_hash, read_manifest, read_source, summary_rows, write_manifest,
                             write_report)
from weightshop.data.manifest import ITEM_KEYS, REQUIRED_KEYS
from weightshop.errors import WeightshopError

TRIGGER = "ohwx"
AREA = 384 * 384


def photo(w, h, seed):
    """A photo-like test image: a gradient, coloured shapes and mild sensor noise, different per seed."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w * 255 * r.random(), y / h * 255 * r.random(), (x + y) / (w + h) * 255], -1)
    im = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(10):
        x0, y0, s = int(r.integers(0, w)), int(r.integers(0, h)), int(r.integers(10, max(11, w // 3)))
        draw.ellipse([x0, y0, x0 + s, y0 + s], fill=tuple(int(v) for v in r.integers(0, 255, 3)))
    noisy = np.asarray(im).astype(float) + r.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def watermark(im):
    ImageDraw.Draw(im).text((im.width - 90, im.height - 24), "(c) ACME", fill=(255, 255, 255),
                            font=ImageFont.load_default())
    return im


def _bomb_png(path, side):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def build_folder(root):
    """Every fault class once, plus good images. Returns {file: (expected verdict, reason words)}."""
    root.mkdir()
    good = f"{TRIGGER}, a photo of shapes on a gradient"
    expect = {}

    def add(name, image, caption=good, verdict="ok", words=None, **save):
        if image is not None:
            image.save(root / name, **save)
        if caption is not None:
            (root / name).with_suffix(".txt").write_text(caption)
        expect[name] = (verdict, words)

    for k in range(4):
        add(f"good{k}.png", photo(640, 480, k))
    (root / "sub").mkdir()
    add("sub/nested.png", photo(640, 480, 10))
    add("good0_copy.png", None, verdict="rejected", words="exact duplicate of good0.png (identical file)")
    (root / "good0_copy.png").write_bytes((root / "good0.png").read_bytes())
    dup = photo(640, 480, 11)
    add("dup_a.png", dup)
    add("dup_b.bmp", dup, verdict="rejected", words="exact duplicate of dup_a.png (same pixels")
    near = photo(640, 480, 12)
    add("near_src.png", near)
    add("near_copy.jpg", near.resize((600, 450), Image.Resampling.LANCZOS), verdict="warning",
        words="near duplicate of near_src.png", quality=85)
    for k in range(3):
        add(f"wm{k}.png", watermark(photo(640, 480, 20 + k)), verdict="warning", words="repeated mark")
    (root / "corrupt.png").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expect["corrupt.png"] = ("rejected", "not an image")
    photo(640, 480, 30).save(root / "full.jpg")
    (root / "truncated.jpg").write_bytes((root / "full.jpg").read_bytes()[:4000])
    (root / "full.jpg").unlink()
    expect["truncated.jpg"] = ("rejected", "truncated")
    (root / "empty.png").write_bytes(b"")
    expect["empty.png"] = ("rejected", "empty file (0 bytes)")
    (root / "notes.jpg").write_text("shopping list: eggs, milk\n")
    expect["notes.jpg"] = ("rejected", "text file")
    _bomb_png(root / "bomb.png", 12_000)
    expect["bomb.png"] = ("rejected", "pixel limit")
    add("no_caption.png", photo(640, 480, 40), caption=None, verdict="warning", words="caption missing")
    add("empty_caption.png", photo(640, 480, 41), caption="  \n", verdict="warning", words="caption empty")
    add("long_caption.png", photo(640, 480, 42), caption=TRIGGER + " " + "red circle blue square " * 200,
        verdict="warning", words="caption too long")
    add("no_trigger.png", photo(640, 480, 43), caption="a photo of shapes", verdict="warning",
        words=f"caption lacks the trigger '{TRIGGER}'")
    add("small.png", photo(200, 150, 44), verdict="warning", words="too small for the target resolution")
    add("tiny.png", photo(20, 20, 45), verdict="rejected", words="too small")
    add("wide.png", photo(1600, 200, 46), verdict="warning", words="extreme aspect ratio 8.00:1")
    add("blurry.png", photo(640, 480, 47).filter(ImageFilter.GaussianBlur(4)), verdict="warning", words="blurry")
    add("lowq.jpg", photo(640, 480, 48), verdict="warning", words="heavy JPEG artefacts: estimated quality", quality=15)
    exif = Image.Exif()
    exif[0x0112] = 8
    add("rotated.jpg", photo(480, 640, 49), verdict="fixed", quality=95, exif=exif.tobytes())
    add("gray.png", photo(640, 480, 50).convert("L"), verdict="fixed")
    (root / "readme.md").write_text("my dataset")
    (root / "orphan.txt").write_text("a caption without its image")
    return expect


def tree_hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[p] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def checked(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("data") / "shoot"
    expect = build_folder(root)
    before = tree_hashes(root)
    calls = []
    manifest = check_dataset(root, target_area=AREA, multiple=16, trigger=TRIGGER, tokenizer=tiny_tokenizer,
                             ocr=False, progress=lambda *a: calls.append(a))
    out = tmp_path_factory.mktemp("out")
    path = write_manifest(manifest, out)
    report = write_report(manifest, root, out)
    return {"root": root, "expect": expect, "before": before, "manifest": manifest, "calls": calls,
            "path": path, "report": report}


def test_each_fault_gets_its_verdict_and_reason(checked):
    items = {i["file"]: i for i in checked["manifest"]["items"]}
    assert set(items) == set(checked["expect"])
    for name, (verdict, words) in checked["expect"].items():
        item = items[name]
        assert item["verdict"] == verdict, (name, item["reasons"])
        if words:
            assert any(words in r for r in item["reasons"]), (name, item["reasons"])
        if verdict == "ok":
            assert item["reasons"] == [] and item["fixes"] == []


def test_conversions_recorded_as_fixes(checked):
    items = {i["file"]: i for i in checked["manifest"]["items"]}
    assert any("EXIF orientation 8" in f for f in items["rotated.jpg"]["fixes"])
    assert (items["rotated.jpg"]["width"], items["rotated.jpg"]["height"]) == (640, 480)
    assert items["gray.png"]["mode"] == "L" and items["gray.png"]["fixes"] == ["grayscale (L) -> RGB"]


def test_source_folder_untouched(checked):
    assert tree_hashes(checked["root"]) == checked["before"]


def test_run_continues_past_bad_files_and_reports_progress(checked):
    n = len(checked["expect"])
    assert [c[:2] for c in checked["calls"]] == [(k, n) for k in range(1, n + 1)]
    counts = checked["manifest"]["counts"]
    assert sum(counts.values()) == n and counts["rejected"] == 8 and counts["ok"] >= 7


def test_manifest_contract(checked):
    m = checked["manifest"]
    assert set(REQUIRED_KEYS) <= set(m)
    assert m["version"] == 1 and m["source"] == str(checked["root"].resolve())
    assert m["target"]["area"] == AREA and m["target"]["multiple"] == 16 and m["trigger"] == TRIGGER
    assert m["policy"] == {"resize": "downscale-only", "crop": "center", "upscale": False,
                           "alpha_background": [255, 255, 255]}
    for item in m["items"]:
        assert set(ITEM_KEYS) <= set(item)
        assert item["verdict"] in ("ok", "fixed", "warning", "rejected")
        if item["verdict"] == "rejected":
            assert item["bucket"] is None
        else:
            assert item["bucket"][0] % 16 == 0 and item["bucket"][1] % 16 == 0
            assert item["bucket"][0] <= item["width"] and item["bucket"][1] <= item["height"]
    good = next(i for i in m["items"] if i["file"] == "good0.png")
    assert good["sha256"] == hashlib.sha256((checked["root"] / "good0.png").read_bytes()).hexdigest()
    assert good["bytes"] == (checked["root"] / "good0.png").stat().st_size
    assert (good["mode"], good["format"], good["caption_source"]) == ("RGB", "PNG", "sidecar")
    assert good["caption_tokens"] > 5 and len(good["phash"]) == 16
    assert sum(m["buckets"].values()) == len([i for i in m["items"] if i["verdict"] != "rejected"])
    verdicts = ("ok", "fixed", "warning", "rejected")
    assert m["counts"] == {v: sum(i["verdict"] == v for i in m["items"]) for v in verdicts}
    stats = m["stats"]
    assert stats["source"]["ignored_files"] == ["readme.md"]
    assert any("orphan.txt" in p for p in stats["source"]["problems"])
    assert stats["thresholds"]["near_duplicate_hamming"] == 6


def test_manifest_round_trip_and_hash(checked):
    m = checked["manifest"]
    assert checked["path"].name == "dataset.json"
    loaded = read_manifest(checked["path"])
    assert loaded == json.loads(json.dumps(m))
    assert manifest_hash(loaded) == manifest_hash(m)
    changed = copy.deepcopy(m)
    changed["created"] = "another time"
    assert manifest_hash(changed) == manifest_hash(m)                 # only the items count
    changed["items"][0]["caption"] = "different"
    assert manifest_hash(changed) != manifest_hash(m)
    bad = checked["path"].parent / "bad.json"
    bad.write_text(json.dumps({"version": 1}))
    with pytest.raises(WeightshopError, match="missing keys"):
        read_manifest(bad)


def test_duplicate_groups(checked):
    groups = {(g["kind"], g["kept"]): g for g in checked["manifest"]["duplicates"]}
    assert groups[("exact", "good0.png")]["others"] == ["good0_copy.png"]
    assert groups[("exact", "dup_a.png")]["others"] == ["dup_b.bmp"]
    near = groups[("near", "near_src.png")]                              # larger resolution kept
    assert near["others"] == ["near_copy.jpg"] and near["distance"] <= 6
    assert len(groups) == 3
    items = {i["file"]: i for i in checked["manifest"]["items"]}
    assert items["near_copy.jpg"]["duplicate_of"] == "near_src.png"
    assert items["good0.png"]["duplicate_of"] is None


def test_repeated_mark_found_only_on_marked_images(checked):
    marks = checked["manifest"]["marks"]
    assert len(marks) == 1 and marks[0]["files"] == ["wm0.png", "wm1.png", "wm2.png"]
    x0, y0, x1, y1 = marks[0]["box"]
    assert x0 >= 0.5 and y0 >= 0.75                                     # bottom-right, where it was drawn
    flagged = [i["file"] for i in checked["manifest"]["items"] if any("repeated mark" in r for r in i["reasons"])]
    assert flagged == ["wm0.png", "wm1.png", "wm2.png"]


def test_caption_stats(checked):
    stats = checked["manifest"]["stats"]["captions"]
    assert stats["count_method"] == "tokenizer" and stats["limit"] == 507
    assert stats["missing"] == 1 and stats["empty"] == 1 and stats["over_limit"] == 1 and stats["missing_trigger"] == 1
    assert stats["tokens"]["max"] > 507 and stats["tokens"]["min"] >= 1
    assert dict(stats["top_words"])["shapes"] == 18 and stats["identical_captions"] >= 10


def test_report_html(checked):
    page = checked["report"].read_text()
    readable = [i for i in checked["manifest"]["items"] if i["width"]]
    assert page.count("class=thumb") == len(readable)
    assert page.count("class=dup ") == 6                                 # 3 groups of 2, side by side
    assert "Duplicates" in page and "Repeated marks" in page and "bottom-right" in page
    assert "truncated" in page and "caption lacks the trigger" in page
    assert page.count("class=mark") == 3
    rows = summary_rows(checked["manifest"])
    assert len(rows) == len(checked["expect"]) and rows[0]["verdict"] == "rejected" and rows[-1]["verdict"] == "ok"
    assert set(rows[0]) == {"file", "verdict", "size", "bucket", "tokens", "notes"}


def test_without_tokenizer_counts_are_approximate(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for k in range(2):
        photo(320, 320, k).save(root / f"{k}.png")
        (root / f"{k}.png").with_suffix(".txt").write_text("one two three " * (k * 200 + 1))
    m = check_dataset(root, target_area=256 * 256, ocr=False)
    assert m["stats"]["captions"]["count_method"] == "words (approximate)"
    items = {i["file"]: i for i in m["items"]}
    assert items["0.png"]["caption_tokens"] == 3 and items["0.png"]["verdict"] == "ok"
    assert any("603 words (approximate" in r for r in items["1.png"]["reasons"])


def test_metadata_sources(tmp_path):
    root = tmp_path / "m"
    (root / "img").mkdir(parents=True)
    for k in range(3):
        photo(320, 320, k).save(root / "img" / f"{k}.png")
    (root / "img" / "0.txt").write_text("sidecar loses to metadata")
    rows = [{"file": "img/0.png", "caption": "from metadata", "style": "ink"},
            {"file_name": "img/1.png", "text": "hf style"}, {"file": "img/missing.png", "caption": "x"},
            {"file": "../outside.png", "caption": "x"}]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    src = read_source(root)
    assert any("line 5" in p for p in src.problems) and any("img/2.png" in p for p in src.problems)
    m = check_dataset(root, target_area=256 * 256, ocr=False)
    items = {i["file"]: i for i in m["items"]}
    assert items["img/0.png"]["caption"] == "from metadata" and items["img/0.png"]["extra"] == {"style": "ink"}
    assert items["img/0.png"]["caption_source"] == "metadata"
    assert items["img/1.png"]["caption"] == "hf style"
    assert items["img/2.png"]["caption_source"] == "none"                 # unlisted but included
    missing = items["img/missing.png"]
    assert missing["verdict"] == "rejected" and "does not exist" in missing["reasons"][0]
    assert items["../outside.png"]["verdict"] == "rejected" and "outside" in items["../outside.png"]["reasons"][0]
    (root / "metadata.jsonl").unlink()
    (root / "meta.csv").write_text("file,caption,rating\nimg/0.png,csv caption,5\n")
    m = check_dataset(root / "meta.csv", target_area=256 * 256, ocr=False)
    items = {i["file"]: i for i in m["items"]}
    assert items["img/0.png"]["caption"] == "csv caption" and items["img/0.png"]["extra"] == {"rating": "5"}


def test_source_errors(tmp_path):
    with pytest.raises(WeightshopError, match="does not exist"):
        check_dataset(tmp_path / "nope", ocr=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("caption only")
    with pytest.raises(WeightshopError, match="no images found"):
        check_dataset(tmp_path / "empty", ocr=False)


def test_ocr_reads_text(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    root = tmp_path / "o"
    root.mkdir()
    im = photo(480, 320, 5)
    ImageDraw.Draw(im).rectangle([20, 20, 400, 90], fill=(255, 255, 255))
    ImageDraw.Draw(im).text((30, 30), "SAMPLE TEXT", fill=(0, 0, 0), font=ImageFont.load_default(size=44))
    im.save(root / "text.png")
    photo(480, 320, 6).save(root / "plain.png")
    m = check_dataset(root, target_area=256 * 256, ocr=True)
    items = {i["file"]: i for i in m["items"]}
    assert m["stats"]["ocr"]["enabled"] and m["stats"]["ocr"]["images_with_text"] >= 1
    found = " ".join(d["text"] for d in items["text.png"]["ocr"]).replace(" ", "").upper()
    assert "SAMPLE" in found
    assert any("text detected (OCR)" in r for r in items["text.png"]["reasons"])
    assert all(0.6 <= d["confidence"] <= 1 and len(d["box"]) == 4 for d in items["text.png"]["ocr"])


def test_ocr_unavailable_is_reported_and_backends_pluggable(tmp_path, monkeypatch):
    root = tmp_path / "o"
    root.mkdir()
    for k in range(2):
        photo(320, 240, k).save(root / f"{k}.png")
    monkeypatch.setitem(__import__("sys").modules, "rapidocr_onnxruntime", None)    # import now fails
    m = check_dataset(root, target_area=128 * 128, ocr=True)
    assert m["stats"]["ocr"]["enabled"] is False and "OCR unavailable" in m["stats"]["ocr"]["backend"]
    assert all(i["verdict"] == "warning" for i in m["items"])                        # only "caption missing"

    def fake_ocr(image):
        return [{"text": "STOCK", "confidence": 0.91, "box": [[0, 0], [9, 0], [9, 9], [0, 9]]}]

    m = check_dataset(root, target_area=128 * 128, ocr=fake_ocr)
    assert m["stats"]["ocr"] == {"enabled": True, "backend": "fake_ocr", "images_with_text": 2}
    assert all(any("'STOCK' (0.91)" in r for r in i["reasons"]) for i in m["items"])


def test_check_is_deterministic(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    for k in range(4):
        im = watermark(photo(320, 240, k)) if k < 3 else photo(320, 240, k)
        im.save(root / f"{k}.png")
    first = check_dataset(root, target_area=128 * 128, ocr=False)
    second = check_dataset(root, target_area=128 * 128, ocr=False)
    assert manifest_hash(first) == manifest_hash(second) and first["marks"] == second["marks"]


def test_a_mark_in_one_cell_must_match_closely():
    """One cell matching at 0.5-0.7 is what chance gives an object's outline at the same place; a mark that
    small must match closely, while a weaker match over neighbouring cells still counts."""
    from weightshop.data.marks import MARK_CELL, MARK_SIZE, find_repeated_marks

    rng = np.random.default_rng(0)

    def marked(share: float, side: int) -> list[str]:
        pattern = rng.normal(0, 10, (side, side))
        maps = []
        for k in range(8):
            m = rng.normal(0, 10, (MARK_SIZE, MARK_SIZE))
            if k < 3:  # the pattern's share of the variance is the expected correlation between two images
                y = x = MARK_SIZE - MARK_CELL - side  # cell-aligned, in the bottom-right band
                m[y:y + side, x:x + side] = np.sqrt(1 - share) * m[y:y + side, x:x + side] + np.sqrt(share) * pattern
            maps.append(m.astype(np.float32))
        return sorted({f for mark in find_repeated_marks(maps, [f"i{k}" for k in range(8)]) for f in mark["files"]})

    assert marked(0.62, MARK_CELL) == []                        # one cell at ~0.6: chance-like, not flagged
    assert marked(0.9, MARK_CELL) == ["i0", "i1", "i2"]         # one cell, close match: a mark
    assert marked(0.62, 2 * MARK_CELL) == ["i0", "i1", "i2"]    # ~0.6 over several cells: a mark
