"""A run's checkpoints: written so a kill at any moment loses nothing, verified before a resume trusts them.

Layout: `<run>/checkpoints/step-NNNNNNN/` holds `state.safetensors` (LoRA, EMA, optimizer tensors), `state.json`
(step, optimizer layout, RNG, config) and `checksums.json` (sha256 and size of both). A checkpoint is written under
a temporary name, synced and renamed into place; `latest.json` then points at it. A resume verifies checkpoints
newest first (by step, whatever `latest.json` says or whether it exists) and takes the first whole one; a damaged
one is named, moved to `checkpoints/damaged/` (never deleted), and the next older one is tried.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.io import atomic_save_safetensors, atomic_write_json, read_json, sha256_file

POINTER = "latest.json"
FILES = ("state.safetensors", "state.json")
CHECKSUMS = "checksums.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(step: int) -> str:
    return f"step-{step:07d}"


def _step_of(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m and path.is_dir() else None


def checkpoint_dirs(ckpts: Path) -> list[Path]:
    """The checkpoint folders, newest step first (numeric order, not the names' order)."""
    found = [(s, p) for p in ckpts.glob("step-*") if (s := _step_of(p)) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def save(ckpts: Path, step: int, tensors: dict, state: dict, keep_last: int) -> Path:
    """Write checkpoint `step` (tensors + JSON state + their checksums) atomically, point latest.json at it, and
    keep the newest `keep_last` by step. Returns the checkpoint's folder."""
    final = ckpts / step_dir(step)
    tmp = ckpts / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(tmp / FILES[0], tensors)
    atomic_write_json(tmp / FILES[1], state)
    atomic_write_json(tmp / CHECKSUMS, {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                                        for name in FILES})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write_json(ckpts / POINTER, {"step": step, "dir": final.name})
    prune(ckpts, keep_last)
    return final


def prune(ckpts: Path, keep_last: int) -> list[Path]:
    """Remove all but the newest `keep_last` checkpoints by step, and temporary folders a kill left behind."""
    removed = checkpoint_dirs(ckpts)[keep_last:] + [p for p in ckpts.glob(".step-*.tmp") if p.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint folder in one phrase, or None when every file is whole and parses."""
    if not path.is_dir():
        return "its folder is missing"
    try:
        sums = read_json(path / CHECKSUMS, missing=None)
    except WeightshopError:
        return f"{CHECKSUMS} is not valid JSON"
    if sums is None:  # written before checkpoints carried checksums: check that it is complete, at least
        return _legacy_damage(path)
    for name in FILES:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        expected = sums.get(name, {})
        if file.stat().st_size != expected.get("bytes"):
            return f"{name} has {file.stat().st_size} bytes, {expected.get('bytes')} were written (truncated?)"
        if sha256_file(file) != expected.get("sha256"):
            return f"{name} does not match its sha256 (overwritten or corrupted in place)"
    return _state_problem(path)


def _state_problem(path: Path) -> str | None:
    try:
        state = json.loads((path / FILES[1]).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{FILES[1]} is not valid JSON (truncated?)"
    if not isinstance(state, dict) or not {"info", "optimizer", "rng", "config"} <= set(state) or \
            "step" not in state["info"]:
        return f"{FILES[1]} is not a checkpoint state (info, optimizer, rng, config)"
    return None


def _legacy_damage(path: Path) -> str | None:
    """A checkpoint without checksums.json: its JSON must parse and its safetensors file must hold every byte its
    header promises (what a truncation breaks; damage of the same size goes unseen, as it did when it was written)."""
    for name in FILES:
        if not (path / name).is_file():
            return f"{name} is missing"
    tensors = path / FILES[0]
    try:
        with open(tensors, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError):
        return f"{FILES[0]} has no readable safetensors header (truncated?)"
    if tensors.stat().st_size != 8 + size + end:
        return f"{FILES[0]} has {tensors.stat().st_size} bytes, its header describes {8 + size + end} (truncated?)"
    return _state_problem(path)


@dataclass
class Found:
    """The checkpoint a resume starts from (None: start fresh), and what was found wrong on the way."""

    path: Path | None
    state: dict | None
    notes: list[str] = field(default_factory=list)


def newest_valid(ckpts: Path, move_damaged: bool = True) -> Found:
    """The newest checkpoint by step that verifies. Damaged ones are named in `notes` and (move_damaged: the main
    process) moved to checkpoints/damaged/; a missing or unreadable latest.json is named too (the scan does not
    need it)."""
    notes: list[str] = []
    if not ckpts.is_dir():
        return Found(None, None)
    try:
        pointer = read_json(ckpts / POINTER, missing=None)
    except WeightshopError:
        pointer = None
        notes.append(f"{ckpts / POINTER} is not valid JSON: ignored, checkpoints found by scanning")
    dirs = checkpoint_dirs(ckpts)
    if pointer is None and dirs and not notes:
        notes.append(f"{ckpts / POINTER} is missing: checkpoints found by scanning")
    elif isinstance(pointer, dict) and pointer.get("dir") and not (ckpts / str(pointer["dir"])).is_dir():
        notes.append(f"checkpoint {pointer['dir']} named by {POINTER} is missing")
    for path in dirs:
        problem = damage(path)
        if problem is None:
            return Found(path, json.loads((path / FILES[1]).read_text()), notes)
        if not move_damaged:
            continue
        aside = ckpts / "damaged" / path.name
        shutil.rmtree(aside, ignore_errors=True)
        aside.parent.mkdir(exist_ok=True)
        path.rename(aside)
        notes.append(f"checkpoint {path.name} is damaged ({problem}): moved to {aside}")
    return Found(None, None, notes)
