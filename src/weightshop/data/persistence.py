"""A cross-image persistence map: an overlay at the same place in several images, whatever it shows.

A watermark, a logo or a stamp pasted onto some pictures of a set is the one thing in them that is identical from
picture to picture, pixel for pixel, at one place; everything around it changes. OCR only reads text, and the cell
rule of `marks` needs a close match in every pair, which a faint, semi-transparent mark over a textured photo does
not give. Here the question is statistical: at each place, do some images agree far beyond chance?

1. Each image is reduced to working frames of local residuals (`frames`): per colour channel, the image minus its
   own box blur, so strokes and edges stay and the scene's shading goes. Per channel keeps the sign of a white,
   black or saturated mark on any background.
2. A frame is cut into overlapping cells; in each cell every pair of images is correlated per channel, in units of
   what chance gives these images there (their cells half a frame away: `cell_scores`), and the channels' z scores
   are folded without their sign (a mid-grey mark is lighter than one picture and darker than another). A pair
   agrees only if it also matches in place better than with one image slid by PERSIST_SHIFT px: an overlay is
   pinned to one place, while a straight outline or a stripe texture also matches when slid along itself.
3. A persistent overlay is a group of >= PERSIST_MIN_IMAGES images agreeing pairwise in a cell (each with at least
   two others) at a mean z >= PERSIST_GROUP_Z. Its members are then decided against the group's own consensus: each
   image's residual is correlated with the median of the group's (itself left out), which picks up members too
   faint to match every other one pairwise and drops passers-by (`_members`).
4. Pairs that agree over much of the frame are one scene (a near duplicate, a burst), not a mark, and are left out.

A mark can be placed relative to the whole frame, to the width (a "proportional" watermark on landscape and portrait
pictures), or in pixels (a fixed-size stamp on pictures of different sizes); `find_marks` searches a set under each
anchor it needs. The thresholds and what they were measured on: docs/curation.md. Everything is numpy and
deterministic.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PERSIST_SIZE = 256        # working frame side (px)
PERSIST_CELL = 32         # cell side (px) ...
PERSIST_STRIDE = 16       # ... overlapping by half
PERSIST_SHIFT = 4         # the peak test: the same cell slid this many px in 8 directions
PERSIST_BLUR = 3          # residual = image - box mean of radius PERSIST_BLUR (a 7x7 box)
PERSIST_MIN_IMAGES = 3
# Calibrated (docs/curation.md, tests/data/test_persistence.py): the z that links two images in a cell, the mean z
# a group must reach, and the z against the group's consensus that makes an image a member.
PERSIST_PAIR_Z = 3.0
PERSIST_GROUP_Z = 6.0
PERSIST_MEMBER_Z = 4.0
PERSIST_PEAK = 0.5        # in place, a pair must score better than slid by this share of its in-place score
PERSIST_SAME_SCENE = 0.25  # pairs linked in more than this share of the cells are one scene, not a mark
PERSIST_CHUNK = 96        # larger sets are searched in interleaved chunks of about this many images
CORNER_FRACTION = 0.25    # corner windows of the "corner-width" anchor: a quarter of the width on a side
CORNER_PIXELS = 256       # corner windows of the "corner-pixels" anchor: 256 px of the image on a side
CORNER_SIDE = 96          # each corner window's side in its working composite (2 x 2 windows)
ANCHORS = ("frame", "corner-width", "corner-pixels")
_GRID_CACHE_FLOATS = 24_000_000  # cache every cell's unit vectors up to this many floats (96 MB)
_MIN_STD = 1.0            # a cell of a channel flatter than this (residual levels) holds no pattern


def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Box mean of radius r over the last two axes (edge-padded), via cumulative sums."""
    k = 2 * r + 1
    pad = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)], mode="edge")
    c = np.cumsum(np.cumsum(pad, -2), -1)
    c = np.pad(c, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)])
    return (c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]) / (k * k)


def _residual(rgb: np.ndarray, blur: int = PERSIST_BLUR) -> np.ndarray:
    """(3, h, w) float levels -> int8 high-pass residual (clipped at +-127: strong edges saturate, which keeps their
    place and sign, all a correlation needs)."""
    return np.clip(np.rint(rgb - _box(rgb, blur)), -127, 127).astype(np.int8)


def _levels(image: Image.Image, box, size: tuple[int, int]) -> np.ndarray:
    crop = image.crop(box) if box is not None else image
    method = Image.Resampling.BOX if crop.width >= size[0] else Image.Resampling.BILINEAR
    return np.asarray(crop.resize(size, method), dtype=np.float32).transpose(2, 0, 1)


def corner_windows(width: int, height: int, anchor: str) -> list[tuple[int, int, int, int]]:
    """The four corner windows (left, top, right, bottom in the image's pixels) of a corner anchor, in the composite's
    order: top-left, top-right, bottom-left, bottom-right."""
    side = CORNER_FRACTION * width if anchor == "corner-width" else CORNER_PIXELS
    s = int(round(max(1, min(side, width, height))))
    return [(0, 0, s, s), (width - s, 0, width, s), (0, height - s, s, height), (width - s, height - s, width, height)]


def frame_size(width: int, height: int) -> int:
    """The whole-image frame's side: PERSIST_SIZE, or half of it for pictures no larger than that half (a 64 px
    picture holds no detail a 256 px frame would add, and costs a quarter as much at 128)."""
    return PERSIST_SIZE // 2 if min(width, height) <= PERSIST_SIZE // 2 else PERSIST_SIZE


def frames(image: Image.Image) -> dict[str, np.ndarray]:
    """The working frames of one image, one per anchor (int8 (3, S, S) R, G, B residuals):

    * "frame": the whole image resized to a square (`frame_size`): a mark at the same place relative to the width
      and height of each picture (exact when all pictures share a size or an aspect ratio);
    * "corner-width": the four corners, each a square a quarter of the width on a side, side by side in a
      2 x CORNER_SIDE square: a mark sized and placed relative to the width (a tool's "proportional" watermark on
      landscape and portrait pictures alike);
    * "corner-pixels": the four corners, each CORNER_PIXELS px of the image on a side: a mark stamped at a fixed
      pixel size and offset on pictures of different sizes.

    Pictures no larger than half a frame get the whole-image frame only.
    """
    rgb = image.convert("RGB")
    side = frame_size(rgb.width, rgb.height)
    out = {"frame": _residual(_levels(rgb, None, (side, side)), _blur(side))}
    if side < PERSIST_SIZE:
        return out
    for anchor in ("corner-width", "corner-pixels"):
        # each window's residual on its own (one residual over the composite would draw its seams, the same lines
        # at the same place in every picture)
        windows = _residual(np.stack([_levels(rgb, box, (CORNER_SIDE, CORNER_SIDE))
                                      for box in corner_windows(rgb.width, rgb.height, anchor)]))
        comp = np.zeros((3, 2 * CORNER_SIDE, 2 * CORNER_SIDE), dtype=np.int8)
        for q in range(4):
            y, x = (q // 2) * CORNER_SIDE, (q % 2) * CORNER_SIDE
            comp[:, y:y + CORNER_SIDE, x:x + CORNER_SIDE] = windows[q]
        out[anchor] = comp
    return out


def _blur(side: int) -> int:
    return max(1, int(PERSIST_BLUR * side / PERSIST_SIZE + 0.5))


def _pool(frame: np.ndarray, side: int) -> np.ndarray:
    """A frame reduced to `side` by averaging blocks (a set mixing small and large pictures is compared at the
    smaller frame)."""
    k = frame.shape[-1] // side
    if k <= 1:
        return frame
    return frame.astype(np.float32).reshape(frame.shape[0], side, k, side, k).mean((2, 4))


_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1), (0, -1), (-1, 0), (-1, -1), (-1, 1))


def _cells(size: int, cell: int, stride: int) -> list[tuple[int, int]]:
    starts = range(0, size - cell + 1, stride)
    return [(y, x) for y in starts for x in starts]


def _unit(stack: np.ndarray, y: int, x: int, h: int, w: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, d) per-channel unit vectors of the images' residuals in a window (each channel's mean removed), and
    (n, C) which channels have a pattern there at all."""
    w = h if w is None else w
    flat = stack[:, :, y:y + h, x:x + w].astype(np.float32, copy=False).reshape(stack.shape[0], stack.shape[1], -1)
    flat = flat - flat.mean(2, keepdims=True)
    norm = np.linalg.norm(flat, axis=2)
    valid = norm / np.sqrt(flat.shape[2]) >= _MIN_STD
    return flat / np.maximum(norm, 1e-6)[:, :, None], valid


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(C, n, m) per-channel correlations of (n, C, d) and (m, C, d) unit vectors. einsum for a couple of dozen
    images, where a BLAS call's overhead (and, on a busy machine, its thread pool's spin-waits; marks.py measured
    seconds) costs more than the product; one BLAS product per channel beyond that (5x faster at 48 images)."""
    if len(a) <= 24:
        return np.einsum("icd,jcd->cij", a, b)
    return np.stack([a[:, c] @ b[:, c].T for c in range(a.shape[1])])


def _fold(z: np.ndarray) -> np.ndarray:
    """Per-channel z scores (C, ...) -> one sign-free score: the root mean square over the channels. A mark lighter
    than one picture's background and darker than another's correlates negatively in that channel: the same mark."""
    return np.sqrt(np.mean(z * z, axis=0))


def _far(r: int, c: int, rows: int) -> list[tuple[int, int]]:
    """2 grid cells about half a frame away (wrapping around): places where a pattern pinned at (r, c) is not."""
    return [((r + rows // 2) % rows, (c + rows // 4) % rows), ((r + rows // 4) % rows, (c - rows // 2) % rows)]


class _Grid:
    """The per-channel unit vectors of every cell of the grid, computed once (all at once for small sets, where
    per-cell overhead would dominate; cell by cell, on demand, for large ones, to bound the memory)."""

    def __init__(self, stack: np.ndarray, cell: int, stride: int):
        self.stack, self.cell, self.stride = stack, cell, stride
        n, C, H, _ = stack.shape
        self.rows = (H - cell) // stride + 1
        self.cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        if n * C * self.rows * self.rows * cell * cell <= _GRID_CACHE_FLOATS:
            win = np.lib.stride_tricks.sliding_window_view(stack, (cell, cell), axis=(2, 3))[:, :, ::stride, ::stride]
            flat = win.transpose(2, 3, 0, 1, 4, 5).reshape(self.rows, self.rows, n, C, cell * cell)
            flat = flat - flat.mean(-1, keepdims=True)
            norm = np.linalg.norm(flat, axis=-1)
            flat /= np.maximum(norm, 1e-6)[..., None]
            valid = norm / cell >= _MIN_STD
            self.cache = {(r, c): (flat[r, c], valid[r, c]) for r in range(self.rows) for c in range(self.rows)}

    def __call__(self, r: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        if (r, c) not in self.cache:
            return _unit(self.stack, r * self.stride, c * self.stride, self.cell)
        return self.cache[(r, c)]


def _sigma(here: np.ndarray, valid: np.ndarray, others: list[tuple[np.ndarray, np.ndarray]], d: int) -> np.ndarray:
    """(C, 1, 1): per channel, the robust spread (1.4826 x median |c|) of the correlations of each image's window with
    every other image's window at places where the pattern is not (`others`: their unit vectors and validity): what
    chance gives these images. Floored at 1/sqrt(d), the spread for two independent patterns of d pixels."""
    n, C = here.shape[:2]
    off = ~np.eye(n, dtype=bool)
    nulls = []
    for other, ok in others:
        keep = off & valid.any(1)[:, None] & ok.any(1)[None, :]
        nulls.append(np.abs(_corr(here, other)[:, keep]))
    null = np.concatenate(nulls, axis=1)
    floor = 1.0 / np.sqrt(d)
    out = [max(1.4826 * float(np.median(null[ch])), floor) if null.shape[1] else floor for ch in range(C)]
    return np.asarray(out, dtype=np.float32)[:, None, None]


def cell_scores(grid: _Grid, r: int, c: int, shift: int = PERSIST_SHIFT, pair_z: float | None = None,
                min_images: int = PERSIST_MIN_IMAGES):
    """For grid cell (r, c): (in-place pair z (n, n), the best pair z with one image slid by `shift` px, which images
    have a pattern here). Per-channel correlations in units of `_sigma` (cells half a frame away), folded over the
    channels. With `pair_z`, the slid scores are only computed where pairs reaching it could form a group (else
    None): most cells of most sets stop here."""
    stack, cell = grid.stack, grid.cell
    n, C, H, W = stack.shape
    here, valid = grid(r, c)
    sigma = _sigma(here, valid, [grid(*rc) for rc in _far(r, c, grid.rows)], cell * cell)
    zc = _corr(here, here) / sigma
    z0 = _fold(zc)
    if pair_z is not None:
        adj = (z0 >= pair_z) & valid.any(1)[:, None] & valid.any(1)[None, :]
        np.fill_diagonal(adj, False)
        if adj.sum() < min_images * (min_images - 1) or not _core(adj, min_images - 1).any():
            return z0, None, valid.any(1)
    y, x = r * grid.stride, c * grid.stride
    slid = np.zeros((n, n), dtype=np.float32)
    sign = np.sign(zc)
    for dy, dx in _SHIFTS:
        yy, xx = y + dy * shift, x + dx * shift
        if 0 <= yy <= H - cell and 0 <= xx <= W - cell:
            # a slid match counts in a channel only with the in-place sign there: a thin line slid onto its own
            # dark rim correlates negatively, which is not a match
            zs = _corr(here, _unit(stack, yy, xx, cell)[0]) / sigma
            zs = np.maximum(zs * sign, 0)
            zs = _fold(np.maximum(zs, zs.transpose(0, 2, 1)))
            slid = np.maximum(slid, zs)
    return z0, slid, valid.any(1)


def _core(adj: np.ndarray, k: int) -> np.ndarray:
    """The k-core of a graph: repeatedly drop nodes with fewer than k links; returns the kept nodes' mask."""
    keep = adj.any(1)
    while True:
        deg = (adj & keep[None, :] & keep[:, None]).sum(1)
        drop = keep & (deg < k)
        if not drop.any():
            return keep
        keep &= ~drop


def _components(adj: np.ndarray, nodes: np.ndarray) -> list[list[int]]:
    left, out = set(np.flatnonzero(nodes).tolist()), []
    while left:
        todo, comp = [left.pop()], []
        while todo:
            i = todo.pop()
            comp.append(i)
            for j in np.flatnonzero(adj[i]).tolist():
                if j in left:
                    left.remove(j)
                    todo.append(j)
        out.append(sorted(comp))
    return out


def find_persistent(stack: np.ndarray, names: list[str], exclude_pairs=frozenset(), *,
                    min_images: int = PERSIST_MIN_IMAGES, pair_z: float = PERSIST_PAIR_Z,
                    group_z: float = PERSIST_GROUP_Z, member_z: float = PERSIST_MEMBER_Z,
                    cell: int = PERSIST_CELL, stride: int = PERSIST_STRIDE, shift: int = PERSIST_SHIFT) -> dict:
    """Overlays shared by >= min_images of the frames in `stack` ((n, C, S, S) from `frame`); `exclude_pairs` holds
    index pairs (i < j) known to be one picture (duplicates), which would otherwise agree everywhere.

    Returns {"marks": [{"box": [x0, y0, x1, y1] (fractions of the frame), "files", "score" (the best cell's mean pair
    z), "member_z" {file: z against the consensus}}], "map": (rows, cols) array, the best group score per cell (the
    persistence map), "overlays": per mark the median residual (C, h, w) of its images in its box, signs aligned}.
    """
    n, _, size, _ = stack.shape
    cells = _cells(size, cell, stride)
    side = int(round(len(cells) ** 0.5))
    scores = np.zeros(len(cells), dtype=np.float32)
    empty = {"marks": [], "map": scores.reshape(side, side), "overlays": []}
    if n < min_images:
        return empty
    links = np.zeros((len(cells), n, n), dtype=bool)
    zs = np.zeros((len(cells), n, n), dtype=np.float32)
    stack = stack.astype(np.float32)
    grid = _Grid(stack, cell, stride)
    for k in range(len(cells)):
        z0, slid, valid = cell_scores(grid, k // side, k % side, shift, pair_z, min_images)
        zs[k] = z0
        if slid is None:
            continue
        ok = (z0 >= pair_z) & (z0 - slid >= PERSIST_PEAK * z0) & valid[:, None] & valid[None, :]
        np.fill_diagonal(ok, False)
        links[k] = ok
    # pairs alike over much of the frame (in place, peak test or not) are one scene: a near duplicate, a burst
    same = (zs >= pair_z).sum(0) > PERSIST_SAME_SCENE * len(cells)
    for i, j in exclude_pairs:
        same[i, j] = same[j, i] = True
    links &= ~same[None]
    hits = []
    for k in range(len(cells)):
        adj = links[k]
        if adj.sum() < min_images * (min_images - 1):
            continue
        for group in _components(adj, _core(adj, min_images - 1)):
            if len(group) < min_images:
                continue
            sub = zs[k][np.ix_(group, group)]
            score = float(sub[~np.eye(len(group), dtype=bool)].mean())
            scores[k] = max(scores[k], score)
            if score >= group_z:
                hits.append((k, set(group), score))
    # regions: touching cells flagged for groups that share at least min_images images
    regions: list[dict] = []
    for k, group, score in sorted(hits, key=lambda h: -h[2]):
        y, x = cells[k]
        for reg in regions:
            if len(reg["core"] & group) >= min_images and any(
                    abs(y - cells[q][0]) <= cell and abs(x - cells[q][1]) <= cell for q in reg["cells"]):
                reg["cells"].append(k)
                reg["core"] |= group
                break
        else:
            regions.append({"cells": [k], "core": set(group), "score": score})
    marks, overlays = [], []
    for reg in regions:
        y0 = min(cells[q][0] for q in reg["cells"]); x0 = min(cells[q][1] for q in reg["cells"])
        y1 = max(cells[q][0] for q in reg["cells"]) + cell; x1 = max(cells[q][1] for q in reg["cells"]) + cell
        members, member_scores, overlay, peaks = _members(stack, sorted(reg["core"]), (y0, x0, y1, x1), member_z, shift)
        members = [m for m in members if not any(same[m, o] and member_scores[o] > member_scores[m] for o in members)]
        if len(members) < min_images:
            continue
        marks.append({"box": [round(x0 / size, 4), round(y0 / size, 4), round(x1 / size, 4), round(y1 / size, 4)],
                      "files": sorted(names[i] for i in members), "score": round(reg["score"], 1),
                      "member_z": {names[i]: round(float(member_scores[i]), 1) for i in members},
                      "peak": {names[i]: round(float(peaks[i] / max(member_scores[i], 1e-6)), 2) for i in members}})
        overlays.append(overlay)
    order = sorted(range(len(marks)), key=lambda i: (-len(marks[i]["files"]), marks[i]["box"]))
    return {"marks": [marks[i] for i in order], "map": scores.reshape(side, side),
            "overlays": [overlays[i] for i in order]}


def _members(stack: np.ndarray, core: list[int], box: tuple[int, int, int, int], member_z: float,
             shift: int = PERSIST_SHIFT):
    """Which images carry the overlay the `core` images share in `box`: each image's residual there against the
    consensus of the core (the per-channel median of their residuals, signs aligned to the strongest member, the
    image itself left out), in units of the same correlation at places across the frame where the overlay is not.
    Returns (members, z per image, the consensus of the members)."""
    y0, x0, y1, x1 = box
    n, C, H, W = stack.shape
    h, w = y1 - y0, x1 - x0
    here, valid = _unit(stack, y0, x0, h, w)
    step_y, step_x = max(8, h), max(8, w)
    places = [(yy, xx) for yy in range(0, H - h + 1, step_y) for xx in range(0, W - w + 1, step_x)
              if abs(yy - y0) >= h or abs(xx - x0) >= w]
    away = np.stack([_unit(stack, yy, xx, h, w)[0] for yy, xx in places], 1)  # (n, places, C, d)

    def consensus(idx):
        ref = here[idx[0]]
        signs = np.sign(np.einsum("icd,cd->ic", here[idx], ref))
        signs[signs == 0] = 1
        med = np.median(here[idx] * signs[:, :, None], axis=0)  # (C, d)
        return med / np.maximum(np.linalg.norm(med, axis=1, keepdims=True), 1e-6)

    strength = np.linalg.norm(stack[core][:, :, y0:y1, x0:x1].astype(np.float32).reshape(len(core), -1), axis=1)
    core = [core[i] for i in np.argsort(-strength)]
    full = consensus(core)
    scores = np.zeros(n, dtype=np.float32)
    peaks = np.zeros(n, dtype=np.float32)
    slid_at = [(y0 + dy * shift, x0 + dx * shift) for dy, dx in _SHIFTS
               if 0 <= y0 + dy * shift <= H - h and 0 <= x0 + dx * shift <= W - w]
    slid = np.stack([_unit(stack, yy, xx, h, w)[0] for yy, xx in slid_at], 1) if slid_at else None
    for i in range(n):
        if not valid[i].any():
            continue
        template = full if i not in core else consensus([c for c in core if c != i])
        null = np.abs(np.einsum("pcd,cd->cp", away[i], template))  # (C, places)
        sigma = np.maximum(1.4826 * np.median(null, axis=1), 1.0 / np.sqrt(h * w))
        zc = np.einsum("cd,cd->c", here[i], template) / sigma
        scores[i] = float(_fold(zc))
        if slid is not None:
            zs = np.maximum(np.einsum("pcd,cd->cp", slid[i], template) / sigma[:, None] * np.sign(zc)[:, None], 0)
            peaks[i] = scores[i] - float(_fold(zs).max())
    members = [i for i in range(n) if scores[i] >= member_z and peaks[i] >= PERSIST_PEAK * scores[i]]
    overlay = consensus(sorted(members, key=lambda i: -scores[i])) if len(members) >= 1 else full
    return members, scores, overlay.reshape(C, h, w), peaks


def anchors_for(sizes: list[tuple[int, int]]) -> tuple[str, ...]:
    """Which anchors a set needs: the whole frame always; fixed-pixel corners when sizes differ; width-relative
    corners when aspect ratios differ too (with one aspect ratio they are the whole frame's cells)."""
    out = ["frame"]
    if len(set(sizes)) > 1 and all(frame_size(w, h) == PERSIST_SIZE for w, h in sizes):
        aspects = [w / h for w, h in sizes]
        if max(aspects) / min(aspects) > 1.02:
            out.append("corner-width")
        out.append("corner-pixels")
    return tuple(out)


def image_box(box: list[float], anchor: str, width: int, height: int) -> list[float]:
    """A mark's box in one image, as fractions of its width and height (a corner anchor's box is in its composite of
    four corner windows; the box is mapped through the window of the corner it lies in)."""
    if anchor == "frame":
        return list(box)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    q = (2 if cy >= 0.5 else 0) + (1 if cx >= 0.5 else 0)
    ox, oy = (q % 2) * 0.5, (q // 2) * 0.5
    u0, v0 = max(0.0, (box[0] - ox) * 2), max(0.0, (box[1] - oy) * 2)
    u1, v1 = min(1.0, (box[2] - ox) * 2), min(1.0, (box[3] - oy) * 2)
    left, top, right, bottom = corner_windows(width, height, anchor)[q]
    sw, sh = right - left, bottom - top
    return [round((left + u0 * sw) / width, 4), round((top + v0 * sh) / height, 4),
            round((left + u1 * sw) / width, 4), round((top + v1 * sh) / height, 4)]


def find_marks(per_image: list[dict[str, np.ndarray]], names: list[str], sizes: list[tuple[int, int]],
               exclude_pairs=frozenset(), min_images: int = PERSIST_MIN_IMAGES, **options) -> dict:
    """Persistent overlays in a set, under every anchor it needs (`anchors_for`): `per_image` holds each image's
    `frames`. Sets over PERSIST_CHUNK images are searched in interleaved chunks (a mark on a few percent of a large
    set still falls >= min_images times into each chunk), so the cost grows linearly.

    Returns {"marks": [{"anchor", "box", "boxes" {file: box in that image}, "files", "score", "member_z"}],
    "maps": {anchor: best group score per cell}, "anchors": [...]} (the report draws `median_image`)."""
    n = len(per_image)
    anchors = anchors_for(sizes)
    chunks = max(1, -(-n // PERSIST_CHUNK))
    marks, maps = [], {}
    for anchor in anchors:
        for c in range(chunks):
            idx = list(range(c, n, chunks))
            if len(idx) < min_images:
                continue
            pos = {g: k for k, g in enumerate(idx)}
            excl = {(pos[i], pos[j]) for i, j in exclude_pairs if i in pos and j in pos}
            side = min(per_image[i][anchor].shape[-1] for i in idx)
            stack = np.stack([_pool(per_image[i][anchor], side) for i in idx])
            scale = side / PERSIST_SIZE if anchor == "frame" else 1.0
            geometry = {"cell": round(PERSIST_CELL * scale), "stride": round(PERSIST_STRIDE * scale),
                        "shift": max(1, round(PERSIST_SHIFT * scale))}
            found = find_persistent(stack, [names[i] for i in idx], excl, min_images=min_images,
                                    **{**geometry, **options})
            maps[anchor] = found["map"] if anchor not in maps else np.maximum(maps[anchor], found["map"])
            for mark in found["marks"]:
                marks.append({"anchor": anchor, "chunk": c, **mark})
    # one mark found under several anchors (or chunks): keep the one that names the most images, then scores best
    by_file = {f: sizes[i] for i, f in enumerate(names)}
    kept: list[dict] = []
    for mark in sorted(marks, key=lambda m: (-len(m["files"]), -m["score"], ANCHORS.index(m["anchor"]))):
        mark["boxes"] = {f: image_box(mark["box"], mark["anchor"], *by_file[f]) for f in mark["files"]}
        twin = next((k for k in kept if _same_place(k, mark) and len(set(k["files"]) & set(mark["files"])) >= 2), None)
        if twin is None:
            kept.append(mark)
        elif twin["anchor"] == mark["anchor"] and twin["chunk"] != mark["chunk"]:  # the same mark in another chunk
            twin["files"] = sorted(set(twin["files"]) | set(mark["files"]))
            twin["boxes"].update(mark["boxes"])
            twin["member_z"].update(mark["member_z"])
    for mark in kept:
        del mark["chunk"]
    return {"marks": kept, "maps": {a: maps[a].round(1).tolist() for a in maps}, "anchors": list(anchors)}


def _same_place(a: dict, b: dict) -> bool:
    """Do two marks overlap in some image they both name?"""
    for f in set(a["boxes"]) & set(b["boxes"]):
        p, q = a["boxes"][f], b["boxes"][f]
        if p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]:
            return True
    return False


def median_image(images: list[Image.Image], boxes: list[list[float]], side: int = 96) -> Image.Image:
    """What the report shows of a mark: the per-pixel median of the images' crops at the mark (side x side). The
    scenes differ from image to image and the median blurs them; the overlay is the same in each and stays sharp."""
    crops = []
    for im, b in zip(images, boxes):
        w, h = im.size
        crop = im.convert("RGB").crop((round(b[0] * w), round(b[1] * h), round(b[2] * w), round(b[3] * h)))
        crops.append(np.asarray(crop.resize((side, side), Image.Resampling.BOX), dtype=np.float32))
    return Image.fromarray(np.clip(np.median(np.stack(crops), 0), 0, 255).astype(np.uint8))
