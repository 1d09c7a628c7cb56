"""The overfitting checks: the copy detector's calibration on augmented copies, memorisation found on planted
copies and not on fresh images, and the flags for learned text, concept bleed and diversity collapse."""

import numpy as np

from weightshop.eval.overfit import aligned_match, augment, calibrate_copies, findings, memorisation
from weightshop.nano import world
from tests.eval.test_gate import make_run


def renders(n, seed, heldout=None, size=128):
    rng = np.random.default_rng(seed)
    return [world.render(world.sample_scene(rng, heldout=heldout), size) for _ in range(n)]


def pixels(images):
    """A plain embedding for the logic's tests: 16x16 grey pixels (the judge layer's features are tested apart)."""
    return np.stack([np.asarray(im.convert("L").resize((16, 16))).ravel().astype(float) + 1.0 for im in images])


def test_the_aligned_match_sees_a_cropped_rescaled_copy_not_another_picture():
    a, b = renders(2, 0)
    copy = augment(a, np.random.default_rng(0))
    assert aligned_match(copy, a) > 0.9 > aligned_match(b, a)


def test_copies_of_training_images_are_caught_and_fresh_images_are_not():
    train = renders(8, 1, heldout="star")
    thresholds = calibrate_copies(train, pixels)
    assert thresholds.copies_caught >= 0.75 and thresholds.others_passed <= 0.125
    rng = np.random.default_rng(5)
    planted = [augment(train[i], rng) for i in (0, 3, 5)]
    fresh = renders(5, 99, heldout="star")
    generated = planted + fresh
    found = memorisation(generated, pixels(generated), train, pixels(train), thresholds)
    caught = {c["image"] for c in found["copies"]}
    assert caught <= {0, 1, 2} and len(caught) >= 2  # the planted copies, not the fresh scenes
    assert [c["training_image"] for c in found["copies"]] == [[0, 3, 5][i] for i in sorted(caught)]


def test_flags_for_text_bleed_and_collapse():
    n = 24
    base = make_run({"probe.concept": np.zeros(n)}, tags=("no-trigger", "no-text"))
    base.set_metrics = {"ocr_text_rate": 0.0, "diversity": 0.30}
    lora = make_run({"probe.concept": np.r_[np.ones(6), np.zeros(n - 6)]}, tags=("no-trigger", "no-text"))
    lora.set_metrics = {"ocr_text_rate": 0.25, "diversity": 0.10}
    out = findings(lora, base, "probe.concept")
    text = " | ".join(out["flags"])
    assert "learned text or watermark" in text and "concept bleed" in text and "diversity collapse" in text
    clean = make_run({"probe.concept": np.zeros(n)}, tags=("no-trigger", "no-text"))
    clean.set_metrics = {"ocr_text_rate": 0.04, "diversity": 0.28}
    assert findings(clean, base, "probe.concept")["flags"] == []


def test_a_mark_the_lora_stamps_on_its_images_is_found_and_the_bases_own_are_not():
    from PIL import ImageDraw

    from weightshop.eval.overfit import learned_marks

    base = renders(12, 7, size=64)
    marked = []
    for im in base:
        im = im.copy()
        draw = ImageDraw.Draw(im)
        draw.rectangle([50, 54, 62, 62], fill=(255, 255, 255))
        draw.line([52, 56, 60, 60], fill=(0, 0, 0), width=1)
        marked.append(im)
    found = learned_marks(marked, base)
    assert found["flag"] and found["marks"][0]["images"] >= 4 and found["marks"][0]["box"][0] > 0.6
    assert not learned_marks(base, base)["flag"]
    # with the training images, only a mark that persists there too is the LoRA's learned watermark
    assert learned_marks(marked, base, train_images=marked[:8])["flag"]
    clean_training = learned_marks(marked, base, train_images=renders(8, 11, size=64))
    assert not clean_training["flag"] and clean_training["training_marks"] == []
