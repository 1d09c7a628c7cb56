"""The dataset manifest (`dataset.json`): the contract between curation and the cache and train stages.

Top-level keys (all always present): version, source, created, target, trigger, policy, items,
duplicates, buckets, stats, counts (plus marks and caption_edits). Each item carries the keys listed in
ITEM_KEYS. Later stages train on the items whose verdict is not "rejected", at their `bucket` size, with
their `caption`; `manifest_hash` identifies exactly that content.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_json

MANIFEST_VERSION = 1
MANIFEST_NAME = "dataset.json"
VERDICTS = ("ok", "fixed", "warning", "rejected")
REQUIRED_KEYS = ("version", "source", "created", "target", "trigger", "policy", "items", "duplicates", "buckets",
                 "stats", "counts")
ITEM_KEYS = ("file", "sha256", "pixel_sha256", "bytes", "width", "height", "mode", "format", "caption",
             "caption_source", "caption_tokens", "verdict", "reasons", "fixes", "bucket", "duplicate_of", "phash",
             "ocr", "extra")


def new_item(file: str) -> dict:
    item = {key: None for key in ITEM_KEYS}
    item.update(file=file, caption_source="none", verdict="ok", reasons=[], fixes=[], ocr=[], extra={})
    return item


def refresh_verdict(item: dict) -> str:
    """Recompute a usable item's verdict from its reasons and fixes; a rejection is final."""
    if item["verdict"] != "rejected":
        item["verdict"] = "warning" if item["reasons"] else "fixed" if item["fixes"] else "ok"
    return item["verdict"]


def recount(manifest: dict) -> None:
    """Refresh `counts` and `buckets` from the items (after verdicts or buckets changed)."""
    items = manifest["items"]
    counts = Counter(i["verdict"] for i in items)
    manifest["counts"] = {v: counts.get(v, 0) for v in VERDICTS}
    sizes = Counter(f"{i['bucket'][0]}x{i['bucket'][1]}" for i in usable_items(manifest) if i["bucket"])
    manifest["buckets"] = dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])))


def usable_items(manifest: dict) -> list[dict]:
    """The items later stages train on: every verdict except "rejected"."""
    return [i for i in manifest["items"] if i["verdict"] != "rejected"]


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def manifest_hash(manifest: dict) -> str:
    """sha256 of the items in canonical JSON: equal exactly when files, verdicts, buckets and captions are."""
    return hashlib.sha256(canonical_json(manifest["items"]).encode("utf-8")).hexdigest()


def write_manifest(manifest: dict, path: str | Path) -> Path:
    """Write atomically to `path` (a folder gets dataset.json inside it); returns the file written."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / MANIFEST_NAME
    validate_manifest(manifest, str(path))
    return atomic_write_json(path, manifest)


def default_cache_dir(manifest_path: str | Path) -> Path:
    """Where `weightshop data cache` writes, and training reads, a set's cache unless told: cache/ beside the manifest."""
    return Path(manifest_path).parent / "cache"


def read_manifest(path: str | Path) -> dict:
    """Load and validate a dataset.json (or the dataset.json inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightshopError(f"dataset manifest {path} does not exist "
                              f"(create it with `weightshop data check`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightshopError(f"dataset manifest {path} cannot be read as JSON ({exc})") from None
    validate_manifest(manifest, str(path))
    return manifest


def validate_manifest(manifest, where: str = "manifest") -> None:
    if not isinstance(manifest, dict):
        raise WeightshopError(f"{where}: a dataset manifest is a JSON object, got {type(manifest).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise WeightshopError(f"{where}: not a weightshop dataset manifest, missing keys {missing}")
    if manifest["version"] != MANIFEST_VERSION:
        raise WeightshopError(f"{where}: manifest version {manifest['version']!r} is not supported "
                              f"(this weightshop reads version {MANIFEST_VERSION})")
    for n, item in enumerate(manifest["items"]):
        absent = [k for k in ITEM_KEYS if k not in item]
        if absent:
            raise WeightshopError(f"{where}: item {n} ({item.get('file', '?')}) lacks keys {absent}")
        if item["verdict"] not in VERDICTS:
            raise WeightshopError(f"{where}: item {item['file']} has verdict {item['verdict']!r}; "
                                  f"accepted: {', '.join(VERDICTS)}")


EXCLUDED = "excluded by the user: "  # the reason `exclude_items` records; `restore_items` removes it


def exclude_items(manifest: dict, files=(), reasons=(), why: str = "") -> list[str]:
    """Reject usable items by file name and/or by a phrase in their reasons (case-insensitive, e.g. "repeated
    mark"), recording why; returns the files excluded. The manifest is edited, never the images, and
    `restore_items` undoes it. Naming a file that is not in the manifest, or a selection that matches no
    usable item, is an error rather than a silent no-op."""
    by_file = {i["file"]: i for i in manifest["items"]}
    unknown = [f for f in files if f not in by_file]
    if unknown:
        raise WeightshopError(f"not in the manifest: {', '.join(unknown)} (files are named as in its items, "
                              f"e.g. {next(iter(by_file), 'none')})")
    if not files and not reasons:
        raise WeightshopError("say what to exclude: file names, or --reason with a phrase from the reasons "
                              "(e.g. 'repeated mark', 'blurry', 'near duplicate')")
    phrases = [r.lower() for r in reasons]
    chosen = [by_file[f] for f in files]
    chosen += [i for i in manifest["items"] if phrases and any(p in r.lower() for p in phrases for r in i["reasons"])
               and i not in chosen]
    usable = [i for i in chosen if i["verdict"] != "rejected"]
    if not usable:
        what = ", ".join([*files, *(repr(r) for r in reasons)])
        raise WeightshopError(f"nothing to exclude: {what} matches no usable item"
                              + (f" ({len(chosen)} matched, all already rejected)" if chosen else ""))
    note = EXCLUDED + (why or ("reason matches " + " / ".join(repr(r) for r in reasons) if reasons and not files
                               else "named"))
    for item in usable:
        item["verdict"] = "rejected"
        item["reasons"] = [*item["reasons"], note]
    recount(manifest)
    return [i["file"] for i in usable]


def restore_items(manifest: dict, files=()) -> list[str]:
    """Undo `exclude_items` for the named files (all excluded ones when none are named); returns them."""
    excluded = [i for i in manifest["items"] if any(r.startswith(EXCLUDED) for r in i["reasons"])]
    if files:
        names = {i["file"] for i in excluded}
        missing = [f for f in files if f not in names]
        if missing:
            raise WeightshopError(f"not excluded, so nothing to restore: {', '.join(missing)}")
        excluded = [i for i in excluded if i["file"] in set(files)]
    for item in excluded:
        item["reasons"] = [r for r in item["reasons"] if not r.startswith(EXCLUDED)]
        item["verdict"] = "ok"
        refresh_verdict(item)
    recount(manifest)
    return [i["file"] for i in excluded]
