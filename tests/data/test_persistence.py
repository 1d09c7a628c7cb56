"""weightshop.data.persistence: a shared overlay at one place in several images is found whatever it shows (a faint,
text-free, semi-transparent logo too), on exactly the images that carry it, and clean sets raise nothing."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.curation_measure import build, measure
from tests.data.photos import photo_like, stamp_logo
from weightshop.data import check_dataset, write_report
from weightshop.data import persistence as P

MIXED = [(640, 480), (480, 640), (720, 480), (600, 600)]


def photo_folder(root, marked=(), seed=0, sizes=MIXED, **logo):
    """12 photo-like JPEGs (landscape, portrait and square); the semi-transparent text-free emblem on `marked`."""
    root.mkdir()
    alphas = (0.3, 0.35, 0.4, 0.5)
    for k in range(12):
        w, h = sizes[k % len(sizes)]
        im = photo_like(w, h, 500 + 100 * seed + k)
        if k in marked:
            im = stamp_logo(im, alphas[list(marked).index(k) % 4], **logo)
        im.save(root / f"p{k:02d}.jpg", quality=90)
    return sorted(f"p{k:02d}.jpg" for k in marked)


def flagged(manifest) -> list[str]:
    return sorted(i["file"] for i in manifest["items"] if any("repeated mark" in r for r in i["reasons"]))


@pytest.mark.parametrize("logo", [
    {"corner": "bottom-right", "size": 0.12},                                  # white, scaled with the width
    {"corner": "top-left", "size": 0.1, "colour": (0, 0, 0)},                  # black, another corner
], ids=["white-bottom-right", "black-top-left"])
def test_semi_transparent_text_free_logo_flagged_on_exactly_the_marked_images(tmp_path, logo):
    marked = photo_folder(tmp_path / "set", marked=(1, 4, 6, 9), **logo)
    m = check_dataset(tmp_path / "set", target_area=384 * 384, ocr=False, features=False)
    assert flagged(m) == marked
    assert len(m["marks"]) == 1 and m["marks"][0]["files"] == marked and "persistence" in m["marks"][0]["method"]
    reason = next(r for r in m["items"][1]["reasons"] if "repeated mark" in r)
    assert "persistence map" in reason and logo["corner"] in reason
    report = write_report(m, tmp_path / "set", tmp_path / "out").read_text()
    assert "class=median" in report and "class=pmap" in report   # the median at the mark and the persistence map


def test_same_logo_at_a_fixed_pixel_size_on_pictures_of_different_sizes(tmp_path):
    marked = photo_folder(tmp_path / "set", marked=(0, 3, 5, 10), seed=1, pixels=64,
                          sizes=[(640, 480), (1024, 683), (512, 384), (800, 600)])
    m = check_dataset(tmp_path / "set", target_area=384 * 384, ocr=False, features=False)
    assert flagged(m) == marked
    assert m["marks"][0]["persistence"]["anchor"] == "corner-pixels"


def test_clean_sets_raise_nothing(tmp_path):
    photo_folder(tmp_path / "photos")
    m = check_dataset(tmp_path / "photos", target_area=384 * 384, ocr=False, features=False)
    assert m["marks"] == [] and flagged(m) == []
    assert m["stats"]["persistence"]["anchors"] == ["frame", "corner-width", "corner-pixels"]

    from weightshop.nano.domain import write_domain_set

    write_domain_set(tmp_path / "shapes", "star", n=24, seed=0, faults=False)
    m = check_dataset(tmp_path / "shapes", target_area=64 * 64, multiple=8, ocr=False, features=False)
    assert m["marks"] == [] and flagged(m) == []


def test_planted_shapes_mark_found_by_both_rules(tmp_path):
    from weightshop.nano.domain import MARKED, write_domain_set

    write_domain_set(tmp_path / "shapes", "star", n=24, seed=1)
    m = check_dataset(tmp_path / "shapes", target_area=64 * 64, multiple=8, ocr=False, features=False)
    planted = [f"star_{i:03d}.png" for i in MARKED]
    assert flagged(m) == planted
    assert [(k["method"], k["files"]) for k in m["marks"]] == [("cells+persistence", planted)]


def test_a_mark_whose_contrast_flips_with_the_background_is_one_mark():
    """A mid-grey mark is lighter than a dark picture and darker than a light one: its residual changes sign from
    picture to picture. Scores are folded over channels without their sign, so it still agrees."""
    rng = np.random.default_rng(0)
    mark = rng.normal(0, 10, (3, 24, 24))
    frames = []
    for k in range(10):
        f = rng.normal(0, 10, (3, 256, 256))
        if k < 4:
            f[:, 220:244, 220:244] += mark * (1 if k % 2 else -1)
        frames.append({"frame": np.clip(f, -127, 127).astype(np.int8)})
    found = P.find_marks(frames, [f"i{k}" for k in range(10)], [(640, 480)] * 10)
    assert [m["files"] for m in found["marks"]] == [["i0", "i1", "i2", "i3"]]
    x0, y0, x1, y1 = found["marks"][0]["box"]
    assert x0 >= 0.75 and y0 >= 0.75


def test_near_duplicates_are_one_scene_not_a_mark():
    """Two copies of one picture agree everywhere; with a third image they must not make a 'mark'."""
    rng = np.random.default_rng(1)
    base = rng.normal(0, 10, (3, 256, 256))
    frames = [{"frame": np.clip(base + rng.normal(0, 2, base.shape), -127, 127).astype(np.int8)} for _ in range(3)]
    frames += [{"frame": np.clip(rng.normal(0, 10, (3, 256, 256)), -127, 127).astype(np.int8)} for _ in range(5)]
    assert P.find_marks(frames, [f"i{k}" for k in range(8)], [(640, 480)] * 8)["marks"] == []


def test_measured_rates_at_reduced_size(tmp_path):
    """The measurement behind the README's numbers (tests/data/curation_measure.py), on a slice: 2 shapes-world
    domain sets with planted marks and 2 without (48 + 48 images), 2 clean photo-like sets, 3 logo sets.

    In full (docs/curation.md): 16 shapes-world domain sets (576 images): 48 of 48 planted marks found, 0 images
    flagged besides them (the cell rule alone: 7); the same 16 without faults: 0 of 576 (cell rule alone: 22);
    24 clean photo-like sets: 0 of 288; 48 logo sets (a text-free emblem at opacity 0.3-0.5 on 4 of 12): 189 of 192
    marked images found (27 before), 0 of 384 unmarked ones flagged."""
    index = build(tmp_path, shapes_seeds=(1,), shapes_sizes=(24,), photo_sets=2, logo_sets=1, logo43_sets=1,
                  logopx_sets=1)
    groups = measure(tmp_path, index)
    for name in ("clean", "shapesclean", "shapes"):
        assert groups[name]["false_persistence"] == 0, groups[name]
    assert groups["clean"]["false_any"] == 0 and groups["shapesclean"]["false_any"] == 0
    assert groups["shapes"]["caught"] == groups["shapes"]["planted"] == 6
    assert groups["shapes"]["caught_persistence"] == 6
    logos = [groups[g] for g in ("logo", "logo43", "logopx")]
    assert sum(g["caught"] for g in logos) >= 11 and sum(g["false_any"] for g in logos) == 0
