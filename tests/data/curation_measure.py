"""Measure the repeated-mark rules' catch and false-alarm rates (the numbers in README's curation section and
docs/curation.md). Run in full with

    .venv/bin/python -m tests.data.curation_measure /tmp/curation-sets        # builds the sets once, then checks

tests/data/test_persistence.py runs it at a reduced size. Sets (all deterministic):

* shapes: the 16 shapes-world domain sets the cell rule was tuned on (star and striped, seeds 0-3, 24 and 48 images:
  576 images; `write_domain_set` with its planted faults: a small corner logo on 3 images of each), and the same 16
  without faults (576 images, nothing planted);
* clean: 24 sets of 12 synthetic photo-like images (tests/data/photos.py; sizes drawn from 640x480, 800x600, 480x640,
  720x480, 600x600, 1024x683, 512x384, 683x1024; JPEG quality 85-95), nothing planted (288 images);
* logo: 24 such sets with the text-free emblem pasted on 4 of 12 at one corner (which corner by set), opacity 0.3-0.5,
  8-15 % of the width, white / black / red / blue by set: landscape and portrait mixed;
* logo43: 12 sets of 4:3 pictures only (640x480, 800x600, 1024x768), logo at the bottom-right;
* logopx: 12 sets with the logo stamped at a fixed 48-96 px on the mixed sizes (a tool that ignores the size).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from tests.data.photos import photo_like, stamp_logo

SIZES = [(640, 480), (800, 600), (480, 640), (720, 480), (600, 600), (1024, 683), (512, 384), (683, 1024)]
CORNERS = ["bottom-right", "bottom-left", "top-right", "top-left"]
COLOURS = [(255, 255, 255), (0, 0, 0), (230, 40, 40), (40, 90, 230)]


def photo_set(folder: Path, seed: int, n: int = 12, marked=(), alpha=(0.3, 0.5), size=(0.08, 0.15),
              corner: str = "bottom-right", pixels: int | None = None, sizes=SIZES) -> list[str]:
    """n photo-like JPEGs in `folder`, the emblem on the `marked` ones; returns the marked files."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    r = np.random.default_rng([seed, 99])
    colour = COLOURS[seed % 4]
    side = r.uniform(*size)
    files = []
    for k in range(n):
        w, h = sizes[int(r.integers(len(sizes)))]
        im = photo_like(w, h, 100000 + 1000 * seed + k)
        if k in marked:
            im = stamp_logo(im, float(r.uniform(*alpha)), corner=corner, size=side, colour=colour, pixels=pixels)
            files.append(f"p{k:02d}.jpg")
        im.save(folder / f"p{k:02d}.jpg", quality=int(r.integers(85, 96)))
    return files


def build(root: Path, shapes_seeds=range(4), shapes_sizes=(24, 48), photo_sets: int = 24, logo_sets: int = 24,
          logo43_sets: int = 12, logopx_sets: int = 12) -> dict[str, dict]:
    """Write every set under root (reusing sets already there); returns {set name: {"group", "marked"}}."""
    from weightshop.nano.domain import MARKED, write_domain_set

    root.mkdir(parents=True, exist_ok=True)
    index_path = root / "sets.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}

    def once(name, group, make):
        if name not in index or not (root / name).is_dir():
            index[name] = {"group": group, "marked": make(root / name)}

    for concept in ("star", "striped"):
        for seed in shapes_seeds:
            for n in shapes_sizes:
                once(f"shapes_{concept}_{seed}_{n}", "shapes",
                     lambda d, c=concept, s=seed, k=n: (write_domain_set(d, c, n=k, seed=s),
                                                        [f"{c}_{i:03d}.png" for i in MARKED])[1])
                once(f"shapesclean_{concept}_{seed}_{n}", "shapesclean",
                     lambda d, c=concept, s=seed, k=n: (write_domain_set(d, c, n=k, seed=s, faults=False), [])[1])
    for seed in range(photo_sets):
        once(f"clean_{seed:02d}", "clean", lambda d, s=seed: photo_set(d, s))
    for seed in range(logo_sets):
        marked = tuple(sorted(np.random.default_rng(seed).choice(12, 4, replace=False)))
        once(f"logo_{seed:02d}", "logo",
             lambda d, s=seed, m=marked: photo_set(d, s, marked=m, corner=CORNERS[s // 6 % 4]))
    for seed in range(logo43_sets):
        marked = tuple(sorted(np.random.default_rng(seed).choice(12, 4, replace=False)))
        once(f"logo43_{seed:02d}", "logo43",
             lambda d, s=seed, m=marked: photo_set(d, s, marked=m, sizes=[(640, 480), (800, 600), (1024, 768)]))
    for seed in range(logopx_sets):
        r = np.random.default_rng(seed)
        marked = tuple(sorted(r.choice(12, 4, replace=False)))
        px = int(r.integers(48, 97))
        once(f"logopx_{seed:02d}", "logopx", lambda d, s=seed, m=marked, p=px: photo_set(d, s, marked=m, pixels=p))
    index_path.write_text(json.dumps(index, indent=1))
    return index


def measure(root: Path, index: dict[str, dict]) -> dict[str, dict]:
    """Run `check_dataset` (no OCR, no features: the mark rules only) on every set; per group: usable images, planted,
    caught (warned "repeated mark"; and by the persistence map), and the images warned besides the planted ones
    ("false_any": what the check says), and what each rule alone would flag besides them (the cell rule's marks the
    persistence map does not confirm warn nobody; they are counted in "false_cells")."""
    from weightshop.data import check_dataset

    out: dict[str, dict] = {}
    for name, info in sorted(index.items()):
        m = check_dataset(root / name, target_area=384 * 384, ocr=False, features=False)
        usable = [i["file"] for i in m["items"] if i["verdict"] != "rejected"]
        marked = set(info["marked"])
        by_rule = {"cells": set(), "persistence": set()}  # what each rule alone would flag
        for mark in m["marks"] + m["stats"]["persistence"].get("unconfirmed", []):
            by_rule["cells"] |= set(mark.get("cells_files", mark["files"] if mark["method"] == "cells" else []))
            by_rule["persistence"] |= set(mark.get("persistence", {}).get("member_z", {}))
        flagged = {i["file"] for i in m["items"] if any("repeated mark" in r for r in i["reasons"])}
        g = out.setdefault(info["group"], {"sets": 0, "images": 0, "planted": 0, "caught": 0, "caught_persistence": 0,
                                           "false_any": 0, "false_cells": 0, "false_persistence": 0,
                                           "sets_with_false": []})
        g["sets"] += 1
        g["images"] += len(usable)
        g["planted"] += len(marked)
        g["caught"] += len(flagged & marked)
        g["caught_persistence"] += len(by_rule["persistence"] & marked)
        g["false_any"] += len(flagged - marked)
        g["false_cells"] += len(by_rule["cells"] - marked)
        g["false_persistence"] += len(by_rule["persistence"] - marked)
        if flagged - marked:
            g["sets_with_false"].append(name)
    return out


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else "/tmp/curation-sets")
    index = build(root)
    for group, g in measure(root, index).items():
        print(f"{group:12s} {json.dumps(g)}")


if __name__ == "__main__":
    main(sys.argv[1:])
