import re

import numpy as np
import pytest

from weightshop.nano import world as W
from weightshop.nano.world import ObjectSpec, Scene

HELDOUT_WORDS = ("star", "striped", "stripe")


def arr(img):
    return np.asarray(img, dtype=np.int32)


def colour_mask(a, rgb, tol=40):
    return np.abs(a - np.array(rgb)).sum(-1) <= tol


def single(shape="circle", colour="red", size="large", fill="solid",
           background="black", position="center", seed=0):
    return Scene((ObjectSpec(shape, colour, size, fill),), background, position=position, seed=seed)


def has_word(text, word):
    return re.search(rf"\b{re.escape(word)}\b", text) is not None


# --- determinism ------------------------------------------------------------

def test_same_seed_same_bytes_and_caption():
    a, b = W.sample_scene(123), W.sample_scene(123)
    assert a == b
    assert W.render(a).tobytes() == W.render(b).tobytes()
    assert W.caption(a, 5) == W.caption(b, 5)
    assert W.captions(a, 5) == W.captions(b, 5)


def test_different_seeds_differ():
    imgs = {W.render(W.sample_scene(s)).tobytes() for s in range(20)}
    assert len(imgs) == 20
    # Jitter alone (same concepts, different seed) changes the pixels.
    assert W.render(single(seed=1)).tobytes() != W.render(single(seed=2)).tobytes()


def test_render_is_rgb_of_requested_size():
    img = W.render(W.sample_scene(0), size=32)
    assert img.mode == "RGB" and img.size == (32, 32)


def test_prompt_suite_and_iter_samples_are_deterministic():
    s1, s2 = W.prompt_suite(12, seed=3), W.prompt_suite(12, seed=3)
    assert s1 == s2 and len(s1) == 12
    assert s1 != W.prompt_suite(12, seed=4)
    a = list(W.iter_samples(7, 3))
    b = list(W.iter_samples(7, 3))
    assert [(x.tobytes(), c, d) for x, c, d in a] == [(x.tobytes(), c, d) for x, c, d in b]
    assert all(x.size == (64, 64) for x, _, _ in a)


# --- held-out concepts ------------------------------------------------------

def test_pretraining_never_contains_heldout():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        scene = W.sample_scene(rng)
        for obj in scene.objects:
            assert obj.shape in W.SHAPES and obj.fill in W.FILLS
        attrs = W.attributes(scene)
        assert not set(attrs.values()) & set(W.HELDOUT_CONCEPTS)
        for cap in W.captions(scene, rng):
            low = cap.lower()
            assert not any(w in low for w in HELDOUT_WORDS), cap
    for scene, cap in W.prompt_suite(200):
        assert not any(w in cap for w in HELDOUT_WORDS)


@pytest.mark.parametrize("concept", ["star", "striped"])
def test_heldout_scenes_contain_concept(concept):
    rng = np.random.default_rng(1)
    counts = set()
    for _ in range(300):
        scene = W.sample_scene(rng, heldout=concept)
        counts.add(len(scene.objects))
        if concept == "star":
            assert any(o.shape == "star" for o in scene.objects)
            assert all(o.fill in W.FILLS for o in scene.objects)
        else:
            assert all(o.fill == "striped" for o in scene.objects)
            assert all(o.shape in W.SHAPES for o in scene.objects)
        for cap in W.captions(scene, rng):
            assert has_word(cap, concept), cap
    assert counts == {1, 2}


def test_heldout_rejects_unknown():
    with pytest.raises(ValueError):
        W.sample_scene(0, heldout="hexagon")
    with pytest.raises(ValueError):
        ObjectSpec("hexagon", "red", "large", "solid")


# --- rendering correctness --------------------------------------------------

@pytest.mark.parametrize("shape", W.SHAPES + W.HELDOUT_SHAPES)
@pytest.mark.parametrize("colour", ["red", "white", "blue"])
def test_solid_centre_is_colour_and_corner_is_background(shape, colour):
    scene = single(shape=shape, colour=colour, background="gray", seed=11)
    a = arr(W.render(scene))
    pl = W.layout(scene)[0]
    cx, cy = int(pl.cx * 64), int(pl.cy * 64)
    assert np.abs(a[cy, cx] - W.COLOURS[colour]).max() <= 3
    for y, x in [(0, 0), (0, 63), (63, 0), (63, 63)]:
        assert np.abs(a[y, x] - W.BACKGROUNDS["gray"]).max() <= 3


def test_large_covers_more_than_small():
    for shape in W.SHAPES:
        big = colour_mask(arr(W.render(single(shape=shape, size="large"))), W.COLOURS["red"]).sum()
        small = colour_mask(arr(W.render(single(shape=shape, size="small"))), W.COLOURS["red"]).sum()
        assert big > 2.5 * small > 0


def test_outline_has_background_at_centre():
    for shape in ("circle", "square"):
        scene = single(shape=shape, fill="outline", background="navy")
        a = arr(W.render(scene))
        pl = W.layout(scene)[0]
        cx, cy = int(pl.cx * 64), int(pl.cy * 64)
        assert np.abs(a[cy, cx] - W.BACKGROUNDS["navy"]).max() <= 3
        assert colour_mask(a, W.COLOURS["red"]).sum() > 40  # the outline is there
        solid = colour_mask(arr(W.render(single(shape=shape, background="navy"))), W.COLOURS["red"]).sum()
        assert colour_mask(a, W.COLOURS["red"]).sum() < 0.6 * solid


def test_striped_alternates_along_a_line():
    scene = single(shape="square", colour="yellow", fill="striped", background="black", seed=4)
    a = arr(W.render(scene))
    pl = W.layout(scene)[0]
    cx, cy, r = int(pl.cx * 64), int(pl.cy * 64), int(pl.radius * 64)
    row = a[cy, cx - r // 2: cx + r // 2]
    near_col = colour_mask(row, W.COLOURS["yellow"], tol=120)
    near_bg = colour_mask(row, W.BACKGROUNDS["black"], tol=120)
    assert near_col.any() and near_bg.any()
    labels = [1 if c else 0 for c, b in zip(near_col, near_bg) if c or b]
    transitions = sum(x != y for x, y in zip(labels, labels[1:]))
    assert transitions >= 3
    # A solid object has no such alternation along the same row.
    solid = arr(W.render(single(shape="square", colour="yellow", background="black", seed=4)))
    assert colour_mask(solid[cy, cx - r // 2: cx + r // 2], W.COLOURS["yellow"], tol=10).all()


def centroid(a, rgb):
    ys, xs = np.nonzero(colour_mask(a, rgb))
    assert len(xs) > 0
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("seed", range(5))
def test_single_position_centroids(seed):
    rgb = W.COLOURS["green"]
    pos = {p: centroid(arr(W.render(single(colour="green", size="small", position=p, seed=seed))), rgb)
           for p in W.POSITIONS}
    assert pos["left"][0] < 32 - 6 and pos["right"][0] > 32 + 6
    assert pos["top"][1] < 32 - 6 and pos["bottom"][1] > 32 + 6
    assert abs(pos["center"][0] - 32) < 4 and abs(pos["center"][1] - 32) < 4


@pytest.mark.parametrize("relation", W.RELATIONS)
def test_two_object_relation_centroids(relation):
    for seed in range(5):
        scene = Scene((ObjectSpec("triangle", "red", "large", "solid"),
                       ObjectSpec("square", "blue", "large", "outline")),
                      "beige", relation=relation, seed=seed)
        a = arr(W.render(scene))
        (x1, y1), (x2, y2) = centroid(a, W.COLOURS["red"]), centroid(a, W.COLOURS["blue"])
        assert {"left of": x1 < x2 - 10, "right of": x1 > x2 + 10,
                "above": y1 < y2 - 10, "below": y1 > y2 + 10}[relation]


def test_sampled_scenes_stay_in_frame_and_do_not_overlap():
    rng = np.random.default_rng(5)
    for _ in range(500):
        scene = W.sample_scene(rng, heldout="star" if rng.random() < 0.5 else None)
        pls = W.layout(scene)
        ext = [p.radius * W._EXTENT[o.shape] for o, p in zip(scene.objects, pls)]
        for p, e in zip(pls, ext):
            assert e <= p.cx <= 1 - e and e <= p.cy <= 1 - e
        if len(pls) == 2:
            d = np.hypot(pls[0].cx - pls[1].cx, pls[0].cy - pls[1].cy)
            assert d > ext[0] + ext[1]


# --- attributes -------------------------------------------------------------

def test_attribute_schema_and_base_coverage():
    rng = np.random.default_rng(2)
    seen = {k: set() for k in W.ATTRIBUTE_VALUES}
    for _ in range(2000):
        attrs = W.attributes(W.sample_scene(rng))
        assert set(attrs) == set(W.ATTRIBUTE_VALUES)
        for k, v in attrs.items():
            assert v in W.ATTRIBUTE_VALUES[k]
            seen[k].add(v)
    for k, values in W.ATTRIBUTE_VALUES.items():
        base = set(values) - set(W.HELDOUT_CONCEPTS)
        assert seen[k] == base, k


def test_attribute_values_include_heldout_and_match_constants():
    assert set(W.ATTRIBUTE_VALUES["shape"]) == set(W.SHAPES + W.HELDOUT_SHAPES)
    assert set(W.ATTRIBUTE_VALUES["fill"]) == set(W.FILLS + W.HELDOUT_FILLS)
    assert set(W.ATTRIBUTE_VALUES["colour"]) == set(W.COLOURS)
    assert set(W.ATTRIBUTE_VALUES["background"]) == set(W.BACKGROUNDS)
    assert "star" in W.ATTRIBUTE_VALUES["shape2"]


def test_attributes_values():
    scene = Scene((ObjectSpec("circle", "red", "small", "outline"),
                   ObjectSpec("star", "blue", "large", "outline")), "navy", relation="above", seed=1)
    assert W.attributes(scene) == {
        "shape": "circle", "colour": "red", "size": "small", "fill": "outline",
        "background": "navy", "count": "two", "position": "none", "relation": "above",
        "shape2": "star", "colour2": "blue"}


def test_palette_is_well_separated():
    rgbs = {**{f"c:{k}": v for k, v in W.COLOURS.items()}, **{f"b:{k}": v for k, v in W.BACKGROUNDS.items()}}
    names = list(rgbs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a[0] == "b" and b[0] == "b":
                continue  # backgrounds never share an image
            assert np.linalg.norm(np.subtract(rgbs[a], rgbs[b])) > 90, (a, b)


# --- captions ---------------------------------------------------------------

def test_many_phrasings_per_scene():
    for seed in range(10):
        scene = W.sample_scene(seed)
        caps = {c for s in range(10) for c in W.captions(scene, s)}
        assert len(caps) >= 5
        assert len({W.caption(scene, s) for s in range(40)}) >= 5


def test_captions_name_every_object_and_background():
    size_words = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
    rng = np.random.default_rng(3)
    for i in range(400):
        scene = W.sample_scene(rng, heldout=(None, "star", "striped")[i % 3])
        for cap in W.captions(scene, rng):
            assert has_word(cap, scene.background), cap
            for obj in scene.objects:
                assert has_word(cap, obj.colour) and has_word(cap, obj.shape), cap
                assert any(has_word(cap, w) for w in size_words[obj.size]), cap
                if obj.fill == "outline":
                    assert has_word(cap, "outlined"), cap
            if len(scene.objects) == 2:
                assert "left of" in cap or "right of" in cap or has_word(cap, "above") or has_word(cap, "below")
            else:
                word = {"center": ("center", "middle")}.get(scene.position, (scene.position,))
                assert any(has_word(cap, w) for w in word), cap


def test_two_object_caption_example():
    scene = Scene((ObjectSpec("circle", "red", "large", "solid"),
                   ObjectSpec("square", "blue", "large", "solid")), "gray", relation="left of")
    caps = W.captions(scene, 0)
    assert any(re.fullmatch(r"a (large|big)( solid| filled)? red circle left of a (large|big)( solid| filled)? "
                            r"blue square on a gray background", c) for c in caps), caps
    # The inverse phrasing must flip the relation, never the meaning.
    assert any(re.search(r"blue square right of an? .*red circle", c) for c in caps), caps
