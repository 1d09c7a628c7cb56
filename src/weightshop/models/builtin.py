"""The built-in models: krea2-nano's committed weights, their names, and their integrity check.

weightshop.nano is the recipe that trains them; this module only knows where a packaged family lives, so
loading a built-in name never imports the recipe. Layout of a packaged family (Hugging Face diffusers
directories, loadable with Krea2Pipeline.from_pretrained):
  krea2-nano-raw/     complete pipeline: model_index.json, transformer/, vae/, text_encoder/, tokenizer/,
                      scheduler/, weightshop.json (the model's defaults)
  krea2-nano-turbo/   the same, with the distilled transformer and is_distilled = true
  probe/              the shapes-world probe classifier (safetensors + config.json)
  checksums.json      sha256 and size of every file above, and the links between the two pipelines
"""

from __future__ import annotations

import json
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_json, sha256_file

WEIGHTS = Path(__file__).parents[1] / "nano" / "weights"  # package data, written by `weightshop nano build`
RAW_DIR = WEIGHTS / "krea2-nano-raw"
TURBO_DIR = WEIGHTS / "krea2-nano-turbo"
PROBE_DIR = WEIGHTS / "probe"
CHECKSUMS = "checksums.json"

NAMES = {"krea2-nano": RAW_DIR, "krea2-nano-raw": RAW_DIR, "krea2-nano-turbo": TURBO_DIR}


def paths(root: Path = WEIGHTS) -> tuple[Path, Path, Path]:
    """(raw dir, turbo dir, probe dir) of a packaged family."""
    return root / RAW_DIR.name, root / TURBO_DIR.name, root / PROBE_DIR.name


def installed(root: Path = WEIGHTS) -> bool:
    return (root / CHECKSUMS).is_file()


def packaged_probe(root: Path) -> Path | None:
    """The probe directory packaged in the family at `root`, or None when root is not a packaged family with one."""
    probe = paths(Path(root))[2]
    return probe if installed(Path(root)) and (probe / "probe.safetensors").is_file() else None


def model_dir(name: str) -> Path:
    if name not in NAMES:
        raise WeightshopError(f"unknown built-in model {name!r}: expected one of {', '.join(NAMES)}")
    if not installed():
        raise WeightshopError(
            f"{name} is not built yet: run `weightshop nano build` (a few CPU hours) to train the nano family"
        )
    return NAMES[name]


def _walk(root: Path) -> tuple[list[Path], dict[str, str]]:
    """(real files, links) under root; a linked directory is recorded as a link, not walked twice."""
    files, links = [], {}
    for path in sorted(root.iterdir()):
        if path.is_symlink():
            links[path.name] = str(path.readlink())
        elif path.is_dir():
            sub_files, sub_links = _walk(path)
            files += sub_files
            links.update({f"{path.name}/{k}": v for k, v in sub_links.items()})
        elif path.is_file():
            files.append(path)
    return files, links


def write_checksums(root: Path) -> dict:
    """Record the sha256 and size of every file of a packaged family, and its links, in root/checksums.json."""
    files, links = _walk(root)
    files = [p for p in files if p.name != CHECKSUMS]
    checksums = {"files": {str(p.relative_to(root)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                           for p in files}, "links": links}
    checksums["total_bytes"] = sum(f["bytes"] for f in checksums["files"].values())
    atomic_write_json(root / CHECKSUMS, checksums)
    return checksums


def verify(root: Path = WEIGHTS) -> list[str]:
    """Files whose sha256 differs from checksums.json, or that are missing (empty when intact)."""
    checksums = json.loads((root / CHECKSUMS).read_text())
    bad = []
    for rel, meta in checksums["files"].items():
        path = root / rel
        if not path.is_file():
            bad.append(f"{rel}: missing")
        elif sha256_file(path) != meta["sha256"]:
            bad.append(f"{rel}: sha256 mismatch")
    for rel, target in checksums.get("links", {}).items():
        link = root / rel
        if link.is_symlink():
            if str(link.readlink()) != target or not link.exists():
                bad.append(f"{rel}: should link to {target}")
        elif link.is_dir():  # a copy that followed the link (cp -r, a wheel): must equal its target
            source = (link.parent / target).resolve().relative_to(root.resolve())
            expected = {k[len(str(source)) + 1:]: v["sha256"] for k, v in checksums["files"].items()
                        if k.startswith(f"{source}/")}
            actual = {str(p.relative_to(link)): sha256_file(p) for p in link.rglob("*") if p.is_file()}
            if actual != expected:
                bad.append(f"{rel}: differs from {target}")
        else:
            bad.append(f"{rel}: missing (should link to {target})")
    return bad
