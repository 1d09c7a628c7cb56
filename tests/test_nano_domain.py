"""Domain sets of held-out concepts with planted faults, and the ground-truth captioner."""

import json

import pytest
from PIL import Image

from weightshop.nano import world
from weightshop.nano.domain import ground_truth_captioner, write_domain_set


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
