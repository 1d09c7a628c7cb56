"""Where the transfer stage finds a LoRA's training images, for the training-set judge (weightshop.judge)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from weightshop.errors import WeightshopError

MAX_TRAIN_IMAGES = 256


def load_training_images(source: str | Path, limit: int = MAX_TRAIN_IMAGES) -> list[Image.Image]:
    """Images of a folder (recursive, sorted) or of a dataset manifest's usable items (the first `limit`)."""
    from weightshop.data.images import ImageRejected, image_extensions, load_image

    source = Path(source)
    if (source.is_file() and source.suffix == ".json") or (source / "dataset.json").is_file():
        from weightshop.data.manifest import read_manifest, usable_items

        manifest = read_manifest(source)
        root = Path(manifest["source"])
        root = root.parent if root.is_file() else root
        files = [root / item["file"] for item in usable_items(manifest)]
    elif source.is_dir():
        exts = image_extensions()
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    else:
        raise WeightshopError(f"training images {source} not found: give a folder of images or a dataset.json")
    images = []
    for path in files[:limit]:
        try:
            images.append(load_image(path).image)
        except ImageRejected:
            continue  # curation already said why; an unreadable file is simply not a reference
    return images


def training_source_for_lora(lora: str | Path) -> Path | None:
    """The dataset manifest a `weightshop train` run used, found from the run's config.yaml beside the LoRA."""
    import yaml

    config = Path(lora).parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        manifest = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("manifest")
    except (yaml.YAMLError, AttributeError):
        return None
    return Path(manifest) if manifest and Path(manifest).exists() else None
