"""Domain sets for LoRAs on krea2-nano: a few dozen images of a held-out concept, with planted faults.

This is the stand-in for "the folder a user hands over": `write_domain_set` renders scenes of a
held-out concept (never seen by nano-Raw) with sidecar captions, then plants the faults curation must
catch: an unreadable file, an exact duplicate, a watermark repeated at the same place on several images,
and a missing caption. The scenes are also written outside the folder (scenes.json), so
`ground_truth_captioner` can caption an image from the renderer's truth, the nano counterpart of
auto-captioning with Qwen3-VL.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import ImageDraw

from weightshop.nano import world
from weightshop.nano.pretrain import scene_from_json, scene_to_json

FAULTS = ("corrupt", "duplicate", "watermark", "missing_caption")


def write_domain_set(folder: str | Path, concept: str = "star", n: int = 24, seed: int = 0,
                     faults: bool = True, size: int = 64) -> dict:
    """Render n scenes of `concept` into folder (PNG + .txt); returns what was planted where."""
    if concept not in world.HELDOUT_CONCEPTS:
        raise ValueError(f"concept must be a held-out one ({', '.join(world.HELDOUT_CONCEPTS)}), got {concept!r}")
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng([seed, 31])
    scenes = {}
    for i in range(n):
        scene = world.sample_scene(rng, heldout=concept)
        name = f"{concept}_{i:03d}.png"
        world.render(scene, size).save(folder / name)
        (folder / f"{concept}_{i:03d}.txt").write_text(world.caption(scene, int(rng.integers(2**31))))
        scenes[name] = scene_to_json(scene)
    planted: dict[str, list[str]] = {}
    if faults:
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
        planted["corrupt"] = ["corrupt.png"]
        shutil.copy(folder / f"{concept}_000.png", folder / f"{concept}_copy.png")
        shutil.copy(folder / f"{concept}_000.txt", folder / f"{concept}_copy.txt")
        scenes[f"{concept}_copy.png"] = scenes[f"{concept}_000.png"]
        planted["duplicate"] = [f"{concept}_copy.png"]
        marked = [f"{concept}_{i:03d}.png" for i in (3, 4, 5)]
        for name in marked:  # a small logo in the same corner of three images: a LoRA would learn it
            from PIL import Image

            with Image.open(folder / name) as im:
                im = im.convert("RGB")
            draw = ImageDraw.Draw(im)
            w, h = im.size
            draw.rectangle([w - 16, h - 9, w - 2, h - 2], outline=(250, 250, 250))
            draw.line([w - 14, h - 4, w - 4, h - 7], fill=(250, 250, 250))
            im.save(folder / name)
        planted["watermark"] = marked
        missing = f"{concept}_{n - 1:03d}.txt"
        (folder / missing).unlink()
        planted["missing_caption"] = [missing.replace(".txt", ".png")]
    (folder.parent / f"{folder.name}.scenes.json").write_text(json.dumps(scenes))
    return planted


def ground_truth_captioner(folder: str | Path, seed: int = 0):
    """A captioner that captions each image from the renderer's ground truth (scenes.json beside folder)."""
    from weightshop.data.captioners import FunctionCaptioner

    folder = Path(folder)
    scenes = json.loads((folder.parent / f"{folder.name}.scenes.json").read_text())

    def caption(image) -> str:
        return world.caption(scene_from_json(scenes[image.info["weightshop_file"]]), seed)

    return FunctionCaptioner(caption, name="shapes-world ground truth")
