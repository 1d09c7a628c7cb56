"""The "shapes world": a deterministic procedural renderer of captioned images.

krea2-nano is a tiny diffusion model trained on CPU at 64x64 px. It cannot
learn natural images in a few CPU hours, so it learns this world instead:
one or two simple shapes with a colour, size, fill, background and a position
(one object) or spatial relation (two objects), each image paired with many
caption phrasings. The world is small enough to learn quickly but rich enough
that attribute binding, spatial relations and texture are real tasks.

Two roles besides pretraining data:

* Held-out concepts (``HELDOUT_SHAPES``, ``HELDOUT_FILLS``) never appear in
  pretraining scenes or captions. They are reserved for LoRA training, so a
  LoRA's effect ("can the model now draw a star / striped fill?") is
  measurable against a base model that has provably never seen it.
* ``attributes`` is the ground truth of a small probe classifier that judges
  generated images; ``ATTRIBUTE_VALUES`` fixes its label space (held-out
  values included, so head sizes never change when LoRAs arrive).

Everything is a pure function of a ``Scene`` (which carries its own seed), so
the same scene always renders to identical bytes. Only numpy and Pillow are
used, keeping the world importable without torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

# --- vocabulary: the single source of truth ---------------------------------

SHAPES = ("circle", "square", "triangle")
HELDOUT_SHAPES = ("star",)
# Saturated, well-separated hues so a 64 px image and a tiny probe agree on them.
COLOURS = {
    "red": (215, 30, 45),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (245, 230, 30),
    "purple": (150, 60, 200),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
}
# Muted/dark tones, each far from every object colour (min RGB distance ~100).
BACKGROUNDS = {
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
    "beige": (195, 175, 135),
    "navy": (20, 30, 90),
}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left of", "right of", "above", "below")
FILLS = ("solid", "outline")
HELDOUT_FILLS = ("striped",)

NONE = "none"
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES + HELDOUT_SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "fill": FILLS + HELDOUT_FILLS,
    "background": tuple(BACKGROUNDS),
    "count": ("one", "two"),
    "position": POSITIONS + (NONE,),
    "relation": RELATIONS + (NONE,),
    "shape2": SHAPES + HELDOUT_SHAPES + (NONE,),
    "colour2": tuple(COLOURS) + (NONE,),
}
HELDOUT_CONCEPTS = HELDOUT_SHAPES + HELDOUT_FILLS


def label_space() -> dict[str, list[str]]:
    """ATTRIBUTE_VALUES as JSON: what a probe's config.json records and what loading a probe checks against."""
    return {k: list(v) for k, v in ATTRIBUTE_VALUES.items()}


# Nominal radius as a fraction of image size. Two-object scenes use smaller
# radii so the objects never overlap.
_RADIUS = {1: {"small": 0.14, "large": 0.26}, 2: {"small": 0.10, "large": 0.17}}
# Farthest point of each shape from its centre, in units of the nominal radius;
# used to keep jittered objects inside the frame.
_EXTENT = {"circle": 1.0, "square": 0.9 * math.sqrt(2), "triangle": 1.2, "star": 1.2}
_POS_XY = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3),
           "bottom": (0.5, 0.7), "center": (0.5, 0.5)}
# Centres of (object 1, object 2) for each relation.
_REL_XY = {"left of": ((0.25, 0.5), (0.75, 0.5)), "right of": ((0.75, 0.5), (0.25, 0.5)),
           "above": ((0.5, 0.25), (0.5, 0.75)), "below": ((0.5, 0.75), (0.5, 0.25))}


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str
    fill: str

    def __post_init__(self) -> None:
        _check("shape", self.shape, SHAPES + HELDOUT_SHAPES)
        _check("colour", self.colour, tuple(COLOURS))
        _check("size", self.size, SIZES)
        _check("fill", self.fill, FILLS + HELDOUT_FILLS)


@dataclass(frozen=True)
class Scene:
    """One or two objects; ``position`` is set for one, ``relation`` for two.

    ``seed`` drives only the geometric jitter, so a scene is fully
    self-describing and renders identically anywhere.
    """

    objects: tuple[ObjectSpec, ...]
    background: str
    position: str = NONE
    relation: str = NONE
    seed: int = 0

    def __post_init__(self) -> None:
        _check("background", self.background, tuple(BACKGROUNDS))
        if len(self.objects) == 1:
            _check("position", self.position, POSITIONS)
            _check("relation", self.relation, (NONE,))
        elif len(self.objects) == 2:
            _check("relation", self.relation, RELATIONS)
            _check("position", self.position, (NONE,))
        else:
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        if self.seed < 0:
            raise ValueError("seed must be non-negative")


@dataclass(frozen=True)
class Placement:
    """Geometry of one object, in fractions of the image size."""

    cx: float
    cy: float
    radius: float
    rotation: float  # degrees


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} not in {allowed}")


def _as_rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(int(rng_or_seed))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# --- sampling ---------------------------------------------------------------

def sample_scene(rng_or_seed: np.random.Generator | int, *, heldout: str | None = None,
                 allow_two: bool = True, two_prob: float = 0.4) -> Scene:
    """Sample a scene. ``heldout=None`` uses only base concepts (pretraining).

    ``heldout="star"`` makes one object a star; ``heldout="striped"`` makes
    every object striped. Fill is shared by a scene's objects so the single
    ``fill`` label describes the whole scene.
    """
    if heldout is not None:
        _check("heldout", heldout, HELDOUT_CONCEPTS)
    rng = _as_rng(rng_or_seed)
    n = 2 if allow_two and rng.random() < two_prob else 1
    background = _pick(rng, tuple(BACKGROUNDS))
    fill = "striped" if heldout == "striped" else _pick(rng, FILLS)
    shapes = [_pick(rng, SHAPES) for _ in range(n)]
    if heldout == "star":
        shapes[int(rng.integers(n))] = "star"
    # Distinct colours keep the two objects separable for captions and probes.
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    objects = tuple(ObjectSpec(shapes[i], tuple(COLOURS)[int(colours[i])], _pick(rng, SIZES), fill)
                    for i in range(n))
    seed = int(rng.integers(2**31))
    if n == 1:
        return Scene(objects, background, position=_pick(rng, POSITIONS), seed=seed)
    return Scene(objects, background, relation=_pick(rng, RELATIONS), seed=seed)


def layout(scene: Scene) -> tuple[Placement, ...]:
    """Deterministic geometry (centre, radius, rotation) derived from the seed."""
    rng = np.random.default_rng([scene.seed, 1])
    n = len(scene.objects)
    if n == 1:
        anchors, along, across = [_POS_XY[scene.position]], 0.04, 0.04
    else:
        anchors, along, across = list(_REL_XY[scene.relation]), 0.02, 0.12
    horizontal = scene.relation in ("left of", "right of")
    out = []
    for obj, (ax, ay) in zip(scene.objects, anchors):
        r = _RADIUS[n][obj.size]
        jx, jy = rng.uniform(-1, 1, size=2)
        # Two-object jitter is small along the relation axis (keeps the
        # relation and the gap) and large across it (variety).
        dx, dy = (along, across) if horizontal or n == 1 else (across, along)
        ext = r * _EXTENT[obj.shape] + 0.01
        cx = float(np.clip(ax + jx * dx, ext, 1 - ext))
        cy = float(np.clip(ay + jy * dy, ext, 1 - ext))
        rot = 0.0 if obj.shape == "circle" else float(rng.uniform(-15, 15))
        out.append(Placement(cx, cy, r, rot))
    return tuple(out)


# --- rendering --------------------------------------------------------------

def _polygon(shape: str, cx: float, cy: float, r: float, rot: float, inset: float):
    """Vertices of a shape shrunk inward by ``inset`` px (for outlines)."""
    a0 = math.radians(rot)
    if shape == "square":
        rad = (0.9 * r - inset) * math.sqrt(2)
        angles, radii = [a0 + math.pi / 4 + k * math.pi / 2 for k in range(4)], [rad] * 4
    elif shape == "triangle":
        # A regular polygon's inradius is R*cos(pi/n); for a triangle, R/2.
        rad = 1.2 * r - 2 * inset
        angles, radii = [a0 - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)], [rad] * 3
    elif shape == "star":
        outer = 1.2 * r * max(0.0, 1 - 2.6 * inset / (1.2 * r))
        angles = [a0 - math.pi / 2 + k * math.pi / 5 for k in range(10)]
        radii = [outer if k % 2 == 0 else 0.5 * outer for k in range(10)]
    else:
        raise ValueError(shape)
    return [(cx + q * math.cos(a), cy + q * math.sin(a)) for a, q in zip(angles, radii)]


def _shape_mask(shape: str, S: int, cx: float, cy: float, r: float, rot: float,
                inset: float = 0.0) -> np.ndarray:
    img = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        q = r - inset
        if q > 0:
            draw.ellipse([cx - q, cy - q, cx + q, cy + q], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot, inset), fill=255)
    return np.asarray(img) > 0


def _object_mask(obj: ObjectSpec, pl: Placement, size: int, supersample: int) -> np.ndarray:
    S = size * supersample
    args = (obj.shape, S, pl.cx * S, pl.cy * S, pl.radius * S, pl.rotation)
    full = _shape_mask(*args)
    if obj.fill == "solid":
        return full
    # Border >= 1.5 output px so outlines survive downscaling to 64 px.
    width = max(1.5 * supersample, 0.16 * pl.radius * S)
    inner = _shape_mask(*args, inset=width)
    border = full & ~inner
    if obj.fill == "outline":
        return border
    # Striped: diagonal hatching with a 4 px period at 64 px (scales with size),
    # inside an outline so the silhouette stays readable.
    half = max(1, round(2 * size / 64)) * supersample
    yy, xx = np.mgrid[0:S, 0:S]
    stripes = ((xx + yy) // half) % 2 == 0
    return border | (inner & stripes)


def render(scene: Scene, size: int = 64, *, supersample: int = 4) -> Image.Image:
    """Render an RGB image; anti-aliased by drawing large and box-downscaling.

    BOX (rather than LANCZOS) never overshoots, so flat regions keep their
    exact palette colours, which the probe and tests rely on.
    """
    S = size * supersample
    canvas = Image.new("RGB", (S, S), BACKGROUNDS[scene.background])
    for obj, pl in zip(scene.objects, layout(scene)):
        mask = Image.fromarray(_object_mask(obj, pl, size, supersample).astype(np.uint8) * 255)
        canvas.paste(COLOURS[obj.colour], (0, 0), mask)
    return canvas.resize((size, size), Image.BOX) if supersample > 1 else canvas


# --- captions ---------------------------------------------------------------

# Colour, shape, background, position and relation words are canonical; only
# size and solid fill have synonyms, drawn from these fixed lists.
_SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
_FILL_WORDS = {"solid": ("", "solid", "filled"), "outline": ("outlined",),
               "striped": ("striped",)}
_POS_PHRASES = {"left": ("on the left",), "right": ("on the right",),
                "top": ("at the top",), "bottom": ("at the bottom",),
                "center": ("in the center", "in the middle")}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

_SINGLE = (
    "{a_o} {pos} on a {bg} background",
    "{o}, {pos}, on {bg}",
    "a photo of {a_o} {pos}, {bg} background",
    "{bg} background with {a_o} {pos}",
    "an image of {a_o} on a {bg} background, {pos}",
    "{colour} {shape}, {size}, {fillc}{pos}, {bg} background",
    "a simple drawing of {a_o} {pos} against a {bg} background",
)
_DOUBLE = (
    "{a_o} {rel} {a_o2} on a {bg} background",
    "{o} {rel} {o2}, on {bg}",
    "a photo of {a_o} {rel} {a_o2}, {bg} background",
    "{bg} background with {a_o} {rel} {a_o2}",
    "two shapes on a {bg} background: {a_o} {rel} {a_o2}",
    "{a_o2} {inv} {a_o} on a {bg} background",
    "a simple drawing of {a_o} {rel} {a_o2} against a {bg} background",
)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _phrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    words = [_pick(rng, _SIZE_WORDS[obj.size]), _pick(rng, _FILL_WORDS[obj.fill]),
             obj.colour, obj.shape]
    return " ".join(w for w in words if w)


def captions(scene: Scene, rng_or_seed: np.random.Generator | int) -> list[str]:
    """One caption per template, synonyms drawn from the rng."""
    rng = _as_rng(rng_or_seed)
    out = []
    obj = scene.objects[0]
    for tpl in (_SINGLE if len(scene.objects) == 1 else _DOUBLE):
        o = _phrase(obj, rng)
        fill = _pick(rng, _FILL_WORDS[obj.fill])
        fields = dict(o=o, a_o=_a(o), bg=scene.background, colour=obj.colour,
                      shape=obj.shape, size=_pick(rng, _SIZE_WORDS[obj.size]),
                      fillc=f"{fill}, " if fill else "")
        if len(scene.objects) == 1:
            fields["pos"] = _pick(rng, _POS_PHRASES[scene.position])
        else:
            o2 = _phrase(scene.objects[1], rng)
            fields.update(o2=o2, a_o2=_a(o2), rel=scene.relation, inv=_INVERSE[scene.relation])
        out.append(re.sub(r"\s+", " ", tpl.format(**fields)).strip())
    return out


def caption(scene: Scene, seed: int) -> str:
    """A single caption, chosen deterministically from ``captions``."""
    rng = np.random.default_rng(int(seed))
    return _pick(rng, captions(scene, rng))


# --- labels and datasets ----------------------------------------------------

def attributes(scene: Scene) -> dict[str, str]:
    """Probe ground truth; keys always equal ``ATTRIBUTE_VALUES`` keys."""
    first = scene.objects[0]
    second = scene.objects[1] if len(scene.objects) == 2 else None
    return {
        "shape": first.shape,
        "colour": first.colour,
        "size": first.size,
        "fill": first.fill,
        "background": scene.background,
        "count": "one" if second is None else "two",
        "position": scene.position,
        "relation": scene.relation,
        "shape2": second.shape if second else NONE,
        "colour2": second.colour if second else NONE,
    }


def prompt_suite(n: int, seed: int = 0, *, heldout: str | None = None) -> list[tuple[Scene, str]]:
    """A fixed evaluation suite: the same (n, seed, heldout) gives the same list."""
    rng = np.random.default_rng([seed, 2])
    suite = []
    for _ in range(n):
        scene = sample_scene(rng, heldout=heldout)
        suite.append((scene, caption(scene, scene.seed)))
    return suite


def iter_samples(seed: int, n: int, *, heldout: str | None = None,
                 size: int = 64) -> Iterator[tuple[Image.Image, str, dict[str, str]]]:
    """Yield (image, caption, attributes) for dataset building."""
    rng = np.random.default_rng([seed, 3])
    for _ in range(n):
        scene = sample_scene(rng, heldout=heldout)
        yield render(scene, size), caption(scene, int(rng.integers(2**31))), attributes(scene)
