"""Generation parameters carried by every image: a PNG text chunk and a JSON sidecar.

Two chunks are written: `weightshop` holds the full record as JSON (what `read_image_record` returns),
and `parameters` holds a one-line human summary in the style other tools show. The sidecar
(`name.json`) holds the same record for tools that drop PNG chunks.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_bytes, atomic_write_json

CHUNK = "weightshop"


def summary_line(record: dict) -> str:
    model = record.get("model", {})
    loras = ", ".join(f"{l['name']}:{l['strength']}" for l in record.get("loras", []))
    parts = [
        record.get("prompt", ""),
        f"Negative prompt: {record['negative_prompt']}" if record.get("negative_prompt") else None,
        f"Steps: {record.get('steps')}, Guidance: {record.get('guidance')}, Mu: {record.get('mu'):.4f}, "
        f"Seed: {record.get('seed')}, Size: {record.get('width')}x{record.get('height')}, "
        f"Model: {model.get('name')} ({model.get('checkpoint')}), "
        f"Model hash: {(model.get('transformer_sha256') or '')[:10]}"
        + (f", LoRAs: {loras}" if loras else ""),
    ]
    return "\n".join(p for p in parts if p is not None)


def png_bytes(image: Image.Image, record: dict) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, json.dumps(record, sort_keys=True))
    info.add_text("parameters", summary_line(record))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_image(path: str | Path, image: Image.Image, record: dict) -> Path:
    """Atomically write the PNG with its record, and the sidecar beside it."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(image, record))
    atomic_write_json(path.with_suffix(".json"), record)
    return path


def read_image_record(path: str | Path) -> dict:
    path = Path(path)
    try:
        with Image.open(path) as im:
            text = im.info.get(CHUNK)
    except OSError as e:
        raise WeightshopError(f"{path} is not a readable image ({e})") from None
    if text is None:
        raise WeightshopError(f"{path} carries no weightshop generation record (PNG text chunk {CHUNK!r})")
    return json.loads(text)
