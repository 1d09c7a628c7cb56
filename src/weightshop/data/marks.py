"""Find a mark (watermark, logo, signature, UI overlay) that recurs at the same place across images.

OCR only reads text, and only when it can; a repeated logo or a faint stamp slips past it. What every
such mark has in common is that it is the *same pattern in the same place* while the photos around it
differ. So each image is reduced to a fixed-size grey high-pass map (location normalised to the image's
width and height), cut into overlapping cells, and for every cell the images' patterns are correlated
pairwise. A cell whose pattern matches in at least `min_images` images, in pairs of images that are not
otherwise alike, is a repeated mark (a lone cell, not part of a larger matching region, must match more
closely: MARK_SINGLE_CELL_CORRELATION). Pairs that match across much of the frame are the same scene (burst
shots, near duplicates) rather than a mark, and are left out. Everything is numpy matrix products: a few
dozen images take well under a second, and the result depends only on the pixels.

Only the outer band of the frame is searched (MARK_BAND): a mark in the middle of the picture is left to
OCR. Limits: a mark stamped at a fixed pixel offset on images of very different sizes or shapes lands at
different normalised places and can be missed (OCR still reads it if it is text), and 1-pixel strokes
over strong pixel noise correlate too weakly to count.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MARK_SIZE = 256          # images are compared as MARK_SIZE x MARK_SIZE grey maps
MARK_CELL = 32           # cell side in map pixels (1/8 of the frame) ...
MARK_STRIDE = 16         # ... overlapping by half, so a mark on a cell border is still whole in one cell
MARK_CORRELATION = 0.5   # Pearson correlation of two cells' high-pass patterns that counts as "same"
# A mark found in a single cell must match more closely. One cell holding one simple edge (an object's
# outline at the same place in a few pictures) matches at 0.5 by chance: on 24 shapes-world images with
# objects at random places, 6 were flagged so, each a single cell scoring 0.56-0.68 (a star's points near
# the right edge). Marks people stamp are text or logos: they match closer (a text watermark on varied
# noisy photos scores 0.90, a solid logo 1.0) or span neighbouring cells.
MARK_SINGLE_CELL_CORRELATION = 0.75
# A mark is a 2-D pattern pinned to one place: slid a little against itself it stops matching. A straight edge or
# a stripe texture slid along itself still matches, so a pattern that keeps MARK_SHIFT_RATIO of its score at some
# small offset (MARK_SHIFT map pixels, 1/32 of the frame, in 8 directions) is an outline or a texture, not a mark.
# Measured (best cell of each region): a text watermark on varied photos keeps 0.03 of its score, the domain
# sets' planted corner logo 0.40; striped fills and straight outlines mostly 0.7-1.1. On 16 shapes-world domain
# sets (star and striped, seeds 0-3, 24 and 48 images: 576 images) the check flagged 279 images besides the
# planted ones before these two rules and 27 after, and found every planted mark and the text watermark.
MARK_SHIFT = 8
MARK_SHIFT_RATIO = 0.5
MARK_MIN_IMAGES = 3      # a pattern must recur in at least this many images
SAME_SCENE_FRACTION = 0.25  # pairs matching in more than this share of cells are one scene, not a mark
MARK_MAX_IMAGES = 500    # beyond this the pairwise comparison costs minutes and gigabytes; it is skipped
_MIN_CELL_STD = 2.0      # cells flatter than this (grey levels) carry no pattern to compare
# Marks are searched only in the outer band of the frame (cells lying wholly within this fraction of an
# edge), where watermarks, signatures and logos sit by convention. The middle is where subjects sit, and a
# subject at the same place in many images (a product centred in every catalog shot) is not a mark.
MARK_BAND = 0.25


def mark_map(image: Image.Image) -> np.ndarray:
    """The normalised high-pass map compared across images (float32, MARK_SIZE x MARK_SIZE)."""
    g = np.asarray(image.convert("L").resize((MARK_SIZE, MARK_SIZE), Image.Resampling.BOX), dtype=np.float32)
    # Subtracting a 5x5 box mean keeps strokes and edges and drops the smooth scene behind them.
    pad = np.pad(g, 2, mode="edge")
    c = np.cumsum(np.cumsum(pad, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    mean = (c[5:, 5:] - c[:-5, 5:] - c[5:, :-5] + c[:-5, :-5]) / 25.0
    return g - mean


def find_repeated_marks(maps: list[np.ndarray], names: list[str], exclude_pairs: set[tuple[int, int]] = frozenset(),
                        min_images: int = MARK_MIN_IMAGES, threshold: float = MARK_CORRELATION) -> list[dict]:
    """Regions whose pattern recurs in >= min_images images: [{"box": [x0, y0, x1, y1] (0..1), "files", "score"}].

    `exclude_pairs` holds (i, j) index pairs (i < j) known to be the same picture (duplicates), which
    would otherwise match everywhere.
    """
    n = len(maps)
    if n < min_images or n > MARK_MAX_IMAGES:
        return []
    starts = range(0, MARK_SIZE - MARK_CELL + 1, MARK_STRIDE)
    band = MARK_BAND * MARK_SIZE
    cells = [(y, x) for y in starts for x in starts
             if x + MARK_CELL <= band or x >= MARK_SIZE - band or y + MARK_CELL <= band or y >= MARK_SIZE - band]
    stack = np.stack(maps)
    match = np.zeros((len(cells), n, n), dtype=bool)
    valid = np.zeros((len(cells), n), dtype=bool)
    for k in range(len(cells)):
        unit, valid[k] = _cell_vectors(stack, cells[k])
        match[k] = _correlate(unit) >= threshold
    match &= valid[:, :, None] & valid[:, None, :]
    eye = np.eye(n, dtype=bool)
    match[:, eye] = False
    # Pairs alike over a large share of the frame are the same scene; a mark is small by comparison. The
    # share is of the whole frame, so two mostly flat pictures that share only a mark stay comparable.
    shared = match.sum(0) / len(cells)
    alike = shared > SAME_SCENE_FRACTION
    for i, j in exclude_pairs:
        alike[i, j] = alike[j, i] = True
    match &= ~alike[None]

    flagged: dict[frozenset, list[tuple[int, float]]] = {}
    for k in range(len(cells)):
        for group in _components(match[k]):
            if len(group) >= min_images:
                idx = sorted(group)
                c = _correlate(_cell_vectors(stack[idx], cells[k])[0])
                score = float(c[~np.eye(len(idx), dtype=bool)].mean())
                if shifted_score(stack[idx], cells[k]) < MARK_SHIFT_RATIO * score:
                    flagged.setdefault(frozenset(idx), []).append((k, score))
    marks = []
    for group, hits in flagged.items():
        for region in _merge_cells([cells[k] for k, _ in hits]):
            scores = [s for k, s in hits if cells[k] in region]
            if len(region) == 1 and max(scores) < MARK_SINGLE_CELL_CORRELATION:
                continue
            y0 = min(y for y, _ in region); x0 = min(x for _, x in region)
            y1 = max(y for y, _ in region) + MARK_CELL; x1 = max(x for _, x in region) + MARK_CELL
            marks.append({"box": [round(x0 / MARK_SIZE, 4), round(y0 / MARK_SIZE, 4),
                                  round(x1 / MARK_SIZE, 4), round(y1 / MARK_SIZE, 4)],
                          "files": sorted(names[i] for i in group), "score": round(max(scores), 3)})
    return sorted(marks, key=lambda m: (-len(m["files"]), m["box"]))


def shifted_score(stack: np.ndarray, cell: tuple[int, int], shift: int = MARK_SHIFT) -> float:
    """The best mean pairwise correlation of the images' patterns in `cell` when each pair is compared with one
    image's cell slid by `shift` map pixels (8 directions): near the in-place score for edges and textures."""
    y, x = cell
    best = -1.0
    n = len(stack)
    here = _cell_vectors(stack, cell)[0]
    for dy, dx in ((0, shift), (shift, 0), (shift, shift), (shift, -shift),
                   (0, -shift), (-shift, 0), (-shift, -shift), (-shift, shift)):
        yy, xx = y + dy, x + dx
        if not (0 <= yy <= MARK_SIZE - MARK_CELL and 0 <= xx <= MARK_SIZE - MARK_CELL):
            continue
        c = _correlate(here, _cell_vectors(stack, (yy, xx))[0])
        best = max(best, float(c[~np.eye(n, dtype=bool)].mean()))
    return best


def _cell_vectors(stack: np.ndarray, cell: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    y, x = cell
    patch = stack[:, y:y + MARK_CELL, x:x + MARK_CELL].reshape(len(stack), -1)
    patch = patch - patch.mean(1, keepdims=True)
    norm = np.linalg.norm(patch, axis=1)
    return patch / np.maximum(norm, 1e-6)[:, None], norm / np.sqrt(patch.shape[1]) >= _MIN_CELL_STD


def _correlate(unit: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    # For a few dozen images einsum, not `@`: the products are tiny, and a threaded BLAS call per cell can
    # spin-wait for seconds when the machine is busy (as it is while training). Large sets need BLAS.
    other = unit if other is None else other
    return unit @ other.T if len(unit) > 96 else np.einsum("id,jd->ij", unit, other)


def describe_box(box: list[float]) -> str:
    """'bottom-right', 'top-centre', ...: where a normalised box sits, for a person."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    return "centre" if (row, col) == ("middle", "centre") else f"{row}-{col}"


def _components(adj: np.ndarray) -> list[set[int]]:
    n = adj.shape[0]
    seen, out = set(), []
    for start in range(n):
        if start in seen or not adj[start].any():
            continue
        comp, todo = set(), [start]
        while todo:
            i = todo.pop()
            if i in comp:
                continue
            comp.add(i)
            todo.extend(int(j) for j in np.flatnonzero(adj[i]) if j not in comp)
        seen |= comp
        out.append(comp)
    return out


def _merge_cells(cells: list[tuple[int, int]]) -> list[set[tuple[int, int]]]:
    """Group flagged cells that overlap or touch into regions."""
    todo, regions = set(cells), []
    while todo:
        region, frontier = set(), [todo.pop()]
        while frontier:
            y, x = frontier.pop()
            region.add((y, x))
            for other in list(todo):
                if abs(other[0] - y) <= MARK_CELL and abs(other[1] - x) <= MARK_CELL:
                    todo.remove(other)
                    frontier.append(other)
        regions.append(region)
    return regions
