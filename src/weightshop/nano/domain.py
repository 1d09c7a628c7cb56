"""Domain sets for LoRAs on krea2-nano: a few dozen images of a held-out concept, with planted faults.

This is the stand-in for "the folder a user hands over": `write_domain_set` renders scenes of a
held-out concept (never seen by nano-Raw) with sidecar captions, drawn as a curator picks shots (every
composition of the concept before any repeats, `covering_scenes`), then plants the faults curation must
catch: an unreadable file, an exact duplicate, a watermark repeated at the same place on several images,
and a missing caption. The scenes are also written outside the folder (scenes.json), so
`ground_truth_captioner` can caption an image from the renderer's truth, the nano counterpart of
auto-captioning with Qwen3-VL.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import ImageDraw

from weightshop.nano import world
from weightshop.nano.pretrain import scene_from_json, scene_to_json

MARKED = (3, 4, 5)  # the images that get the repeated mark


def composition(scene: world.Scene, concept: str) -> str:
    """The composition a scene shows its concept in, as the pixels read (probe.canonical): a lone object's position
    and size, or, beside another object, the axis, which slot (left/upper or right/lower) and its size. A fill
    covers both objects, so its pair compositions name the first object's."""
    from weightshop.nano.probe import canonical

    if len(scene.objects) == 1:
        return f"alone {scene.position} {scene.objects[0].size}"
    scene = canonical(scene)
    slot = next(i for i, o in enumerate(scene.objects) if concept in (o.shape, o.fill))  # a fill: the first
    axis = "across" if scene.relation == "left of" else "stacked"
    return f"pair {axis} {('first', 'second')[slot]} {scene.objects[slot].size}"


def compositions(concept: str) -> tuple[str, ...]:
    """Every composition a concept's scenes can take (`composition`'s range): 10 alone; beside another object 8 for
    a shape, 4 for a fill."""
    slots = ("first", "second") if concept in world.HELDOUT_SHAPES else ("first",)
    alone = [f"alone {p} {s}" for p in world.POSITIONS for s in world.SIZES]
    pair = [f"pair {a} {slot} {s}" for a in ("across", "stacked") for slot in slots for s in world.SIZES]
    return tuple(alone + pair)


def covering_scenes(concept: str, n: int, rng: np.random.Generator, spare: tuple[int, ...] = ()) -> list:
    """n scenes of the concept that show it in every composition before any is repeated (as a curator picks varied
    shots), in shuffled order; the indices in `spare` get the repeats, so leaving those images out keeps the cover.
    Why: a LoRA draws its concept worst in the compositions its set left out (docs/transfer.md, the star)."""
    kinds = compositions(concept)
    wanted = [kinds[i] for i in rng.permutation(len(kinds))]
    spare = [i for i in spare if 0 <= i < n]
    order = dict(zip([i for i in range(n) if i not in spare] + spare, itertools.cycle(wanted)))
    scenes = []
    for i in range(n):
        for _ in range(10_000):  # rejection: each composition is drawn at least 2.5 % of the time
            scene = world.sample_scene(rng, heldout=concept)
            if composition(scene, concept) == order[i]:
                scenes.append(scene)
                break
        else:
            raise RuntimeError(f"no {concept} scene in composition {order[i]!r} after 10000 draws")
    return scenes


def write_domain_set(folder: str | Path, concept: str = "star", n: int = 24, seed: int = 0,
                     faults: bool = True, size: int = 64, cover: bool = True) -> dict:
    """Render n scenes of `concept` into folder (PNG + .txt); returns what was planted where.

    `cover` draws the scenes so the images left after the marked ones and the uncaptioned one (should it be left
    out rather than captioned) show the concept in every composition (`covering_scenes`); without it each scene is
    drawn independently."""
    if concept not in world.HELDOUT_CONCEPTS:
        raise ValueError(f"concept must be a held-out one ({', '.join(world.HELDOUT_CONCEPTS)}), got {concept!r}")
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng([seed, 31])
    scenes = {}
    drawn = (covering_scenes(concept, n, rng, spare=(*MARKED, n - 1) if faults else ()) if cover
             else [world.sample_scene(rng, heldout=concept) for _ in range(n)])
    for i, scene in enumerate(drawn):
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
        marked = [f"{concept}_{i:03d}.png" for i in MARKED]
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


class GroundTruthCaptioner:
    """Captions each image of a domain set from the renderer's ground truth (scenes.json beside the folder).

    A `weightshop.data.captioners.Captioner` by its shape (a name and `caption(images)`), so the curate stage
    takes it like any other captioner without the world importing that stage."""

    name = "shapes-world ground truth"

    def __init__(self, folder: str | Path, seed: int = 0):
        folder = Path(folder)
        self.scenes = json.loads((folder.parent / f"{folder.name}.scenes.json").read_text())
        self.seed = seed

    def caption(self, images) -> list[str]:
        return [world.caption(scene_from_json(self.scenes[im.info["weightshop_file"]]), self.seed) for im in images]


def ground_truth_captioner(folder: str | Path, seed: int = 0) -> GroundTruthCaptioner:
    return GroundTruthCaptioner(folder, seed)
