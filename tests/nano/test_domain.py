"""Domain sets of held-out concepts with planted faults, and the ground-truth captioner."""

import json

import numpy as np
import pytest
from PIL import Image

from weightshop.nano import world
from weightshop.nano.domain import composition, compositions, covering_scenes, ground_truth_captioner, write_domain_set
from weightshop.nano.pretrain import scene_from_json


def test_domain_set_has_the_concept_and_the_planted_faults(tmp_path):
    planted = write_domain_set(tmp_path / "stripes", "striped", n=8)
    assert set(planted) == {"corrupt", "duplicate", "watermark", "missing_caption"}
    captions = [p.read_text() for p in (tmp_path / "stripes").glob("*.txt")]
    assert len(captions) == 8 and all("striped" in c for c in captions)  # 7 originals + the duplicate's
    assert not (tmp_path / "stripes" / "striped_007.txt").exists()
    scenes = json.loads((tmp_path / "stripes.scenes.json").read_text())
    assert all(o["fill"] == "striped" for s in scenes.values() for o in s["objects"])
    with pytest.raises(ValueError, match="held-out"):
        write_domain_set(tmp_path / "x", "circle")


def test_ground_truth_captioner_reads_the_scene(tmp_path):
    write_domain_set(tmp_path / "star", "star", n=4, faults=False)
    captioner = ground_truth_captioner(tmp_path / "star")
    image = Image.open(tmp_path / "star" / "star_002.png")
    image.info["weightshop_file"] = "star_002.png"
    text = captioner.caption([image])[0]
    assert "star" in text and any(c in text for c in world.COLOURS)


@pytest.mark.parametrize("concept", world.HELDOUT_CONCEPTS)
def test_covering_draw_shows_every_composition_in_the_images_a_curator_keeps(concept):
    kinds = compositions(concept)
    assert len(kinds) == len(set(kinds)) == (18 if concept == "star" else 14)
    spare = (3, 4, 5, 23)
    scenes = covering_scenes(concept, 24, np.random.default_rng(1), spare=spare)
    kept = [composition(s, concept) for i, s in enumerate(scenes) if i not in spare]
    assert set(kept) == set(kinds)  # 20 kept images cover all 18 (14) compositions
    assert all(composition(s, concept) in kinds for s in scenes)
    # too few images: still no composition twice before every one is shown once
    few = [composition(s, concept) for s in covering_scenes(concept, 6, np.random.default_rng(2))]
    assert len(set(few)) == 6


def test_composition_reads_the_scene_as_the_pixels_do():
    star = world.ObjectSpec("star", "red", "large", "solid")
    circle = world.ObjectSpec("circle", "blue", "small", "solid")
    # "a large star right of a circle" is a circle left of a star: the star is the second slot across
    assert composition(world.Scene((star, circle), "black", relation="right of"), "star") == "pair across second large"
    assert composition(world.Scene((circle, star), "black", relation="above"), "star") == "pair stacked second large"
    assert composition(world.Scene((star,), "gray", position="top"), "star") == "alone top large"


def test_domain_set_covers_compositions_unless_asked_not_to(tmp_path):
    write_domain_set(tmp_path / "a", "star", n=24)
    scenes = json.loads((tmp_path / "a.scenes.json").read_text())
    kept = {composition(scene_from_json(s), "star") for name, s in scenes.items()
            if name not in {"star_003.png", "star_004.png", "star_005.png", "star_023.png", "star_copy.png"}}
    assert kept == set(compositions("star"))
    write_domain_set(tmp_path / "b", "star", n=24, cover=False)
    independent = json.loads((tmp_path / "b.scenes.json").read_text())
    assert {composition(scene_from_json(s), "star") for s in independent.values()} != set(compositions("star"))
