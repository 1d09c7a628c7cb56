"""Find the images and captions a user handed over; never writes to (or reads code from) their folder.

Two layouts are accepted:

* a folder, searched recursively, of images with optional sidecar captions (`cat.png` + `cat.txt`);
* a metadata table at the folder's root (`metadata.jsonl`, `metadata.csv` or `metadata.json`), or such a
  file passed directly, with a file column (`file`, or Hugging Face's `file_name`) and an optional
  caption column (`caption`, or `text`); every other column is kept as the item's `extra`.

With a metadata table, its captions win over sidecars; images in the folder that the table does not list
are still included (caption from a sidecar if present) and counted in `problems`, so nothing the user
handed over disappears silently. Hidden files and folders (names starting with ".") are skipped.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from weightshop.data.images import image_extensions
from weightshop.errors import WeightshopError

METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.json")
FILE_KEYS = ("file", "file_name", "image")
CAPTION_KEYS = ("caption", "text")


@dataclass
class SourceItem:
    file: str                        # posix path relative to the source root
    path: Path                       # absolute path on disk
    caption: str | None = None
    caption_source: str = "none"     # "sidecar" | "metadata" | "none"
    extra: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # reasons to reject before even decoding
    notes: list[str] = field(default_factory=list)     # warnings (an unreadable caption file)


@dataclass
class Source:
    root: Path
    items: list[SourceItem]
    metadata: Path | None = None
    problems: list[str] = field(default_factory=list)  # dataset-level notes (orphan captions, bad rows)
    ignored: list[str] = field(default_factory=list)   # files that are neither images nor captions


def read_source(source: str | Path) -> Source:
    """List the images (and their captions) in a folder or metadata file; raise when there are none."""
    given = Path(source).expanduser()
    if not given.exists():
        raise WeightshopError(f"dataset source {given} does not exist (pass a folder of images or a "
                              f"metadata .jsonl/.csv/.json file)")
    if given.is_file():
        if given.suffix.lower() not in (".jsonl", ".csv", ".json"):
            raise WeightshopError(f"dataset source {given} is a file but not a metadata table "
                                  f"(accepted: .jsonl, .csv, .json) nor a folder")
        root, metadata = given.resolve().parent, given.resolve()
    else:
        root = given.resolve()
        metadata = next((root / n for n in METADATA_NAMES if (root / n).is_file()), None)
    found, captions, ignored = _scan(root)
    src = Source(root=root, items=[], metadata=metadata, ignored=ignored)
    items: dict[str, SourceItem] = {}
    if metadata is not None:
        for row_no, row in _read_rows(metadata, src.problems):
            item = _item_from_row(root, metadata, row_no, row, src.problems)
            if item is None:
                continue
            if item.file in items:
                src.problems.append(f"{metadata.name} row {row_no}: {item.file} is listed again; the first row is used")
                continue
            items[item.file] = item
        unlisted = sorted(set(found) - set(items))
        if unlisted:
            src.problems.append(f"{len(unlisted)} image(s) in the folder are not listed in {metadata.name} and were "
                                f"included with sidecar captions where present: {', '.join(unlisted[:5])}"
                                + (" ..." if len(unlisted) > 5 else ""))
    for rel in found:
        if rel not in items:
            items[rel] = SourceItem(file=rel, path=root / rel)
    for item in items.values():
        if item.caption_source == "none" and not item.problems:
            _attach_sidecar(item)
    used = {str(PurePosixPath(i.file).with_suffix(".txt")) for i in items.values()}
    orphans = sorted(c for c in captions if c not in used)
    if orphans:
        src.problems.append(f"{len(orphans)} caption file(s) have no image beside them: {', '.join(orphans[:5])}"
                            + (" ..." if len(orphans) > 5 else ""))
    src.items = [items[k] for k in sorted(items)]
    if not src.items:
        exts = ", ".join(sorted(image_extensions())[:12])
        raise WeightshopError(f"no images found in {root} (searched recursively; accepted extensions include "
                              f"{exts}, ...)")
    return src


def _scan(root: Path) -> tuple[list[str], list[str], list[str]]:
    exts = image_extensions()
    images, captions, ignored = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            suffix = Path(name).suffix.lower()
            if suffix in exts:
                images.append(rel)
            elif suffix == ".txt":
                captions.append(rel)
            elif rel not in METADATA_NAMES:
                ignored.append(rel)
    return images, captions, ignored


def _read_text(path: Path) -> str:
    # utf-8-sig drops the byte-order mark Windows editors put at the start of text files.
    return path.read_text(encoding="utf-8-sig")


def _attach_sidecar(item: SourceItem) -> None:
    sidecar = item.path.with_suffix(".txt")
    if not sidecar.is_file():
        return
    try:
        item.caption = _read_text(sidecar).strip()
        item.caption_source = "sidecar"
    except UnicodeDecodeError:
        item.notes.append(f"caption file {sidecar.name} is not UTF-8 text; it was ignored")
    except OSError as exc:
        item.notes.append(f"caption file {sidecar.name} cannot be read ({exc.strerror or exc})")


def _read_rows(metadata: Path, problems: list[str]):
    """Yield (row number, dict) from a jsonl/csv/json table, noting malformed rows instead of stopping."""
    try:
        text = _read_text(metadata)
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightshopError(f"metadata file {metadata} cannot be read as UTF-8 text ({exc})") from None
    suffix = metadata.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not set(FILE_KEYS) & set(reader.fieldnames):
            raise WeightshopError(f"metadata file {metadata} has columns {reader.fieldnames}; it needs a file column "
                                  f"({' or '.join(FILE_KEYS)}) and optionally a caption column")
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            yield row_no, {k: v for k, v in row.items() if k is not None}
        return
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightshopError(f"metadata file {metadata} is not valid JSON ({exc})") from None
        if not isinstance(rows, list):
            raise WeightshopError(f"metadata file {metadata} must hold a JSON list of objects with a file key")
        yield from enumerate(rows, start=1)
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{metadata.name} line {line_no}: not valid JSON ({exc.msg}); skipped")


def _item_from_row(root: Path, metadata: Path, row_no: int, row, problems: list[str]) -> SourceItem | None:
    where = f"{metadata.name} row {row_no}"
    if not isinstance(row, dict):
        problems.append(f"{where}: expected an object with a file key, got {type(row).__name__}; skipped")
        return None
    key = next((k for k in FILE_KEYS if row.get(k)), None)
    if key is None:
        problems.append(f"{where}: no file given (keys: {', '.join(FILE_KEYS)}); skipped")
        return None
    name = str(row[key]).replace("\\", "/")
    rel = PurePosixPath(name)
    cap_key = next((k for k in CAPTION_KEYS if k in row), None)
    caption = row.get(cap_key) if cap_key else None
    extra = {k: v for k, v in row.items() if k not in (key, cap_key)}
    item = SourceItem(file=rel.as_posix(), path=root / rel, extra=extra)
    if cap_key is not None:
        item.caption = None if caption is None else str(caption).strip()
        item.caption_source = "metadata"
    # Only files inside the source folder are read: a table must not point the tool elsewhere.
    if rel.is_absolute() or ".." in rel.parts:
        item.problems.append(f"{where} points outside the source folder ({name}); only files inside it are read")
    elif not item.path.is_file():
        item.problems.append(f"{where} lists {name}, which does not exist in {root}")
    return item
