"""`weightshop data cache`: encode each image and caption once, not once per training step.

For every usable manifest item: the VAE latents of the image at its bucket (read by the same
`load_image` the check used, resized and cropped by `resize_and_crop`, normalised with the VAE's
latents_mean / latents_std exactly as the pipeline un-normalises them), and the caption's tapped
text-encoder hidden-state stack + mask (Krea2Pipeline's own prompt encoding). The empty caption is
always cached too, so caption dropout keeps working from the cache (one well-known trainer silently
disables it when embeddings are cached).

Each entry is one safetensors file named by its key: a hash of (content, model and encoder identity,
bucket, dtype, policy). `index.json` lists every entry with its sha256, so a re-run encodes only new or
changed items, and a corrupt or stale file is found and re-encoded. The VAE and the text encoder are
loaded one at a time, and only when something is missing: a complete cache loads neither.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weightshop.data.buckets import ResizePolicy, resize_and_crop
from weightshop.data.images import load_image
from weightshop.data.manifest import manifest_hash, usable_items
from weightshop.errors import WeightshopError
from weightshop.io import atomic_save_safetensors, atomic_write_json, cached_sha256, sha256_bytes, sha256_file

INDEX = "index.json"
CACHE_VERSION = 1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _dir_identity(path: Path) -> str:
    """sha256 over a component folder's weight and config files (what makes its outputs what they are)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json"))
    if not files:
        raise WeightshopError(f"{path} holds no weights")
    return sha256_bytes("".join(f"{p.name}:{cached_sha256(p)}" for p in files).encode())[:32]


@dataclass(frozen=True)
class Encoders:
    """Where the VAE and text encoder live, and their identities (keys change when weights change)."""

    components: Path
    vae_id: str
    text_id: str
    max_sequence_length: int
    select_layers: tuple[int, ...]

    @classmethod
    def for_model(cls, model: str | Path, max_sequence_length: int | None = None) -> "Encoders":
        from weightshop.models.loading import resolve_source, text_encoder_select_layers

        source = resolve_source(model)
        comp = source.components
        max_len = max_sequence_length or source.max_sequence_length
        layers = text_encoder_select_layers(comp)
        text_id = sha256_bytes(f"{_dir_identity(comp / 'text_encoder')}|{_dir_identity(comp / 'tokenizer')}|"
                               f"{layers}".encode())[:32]
        return cls(comp, _dir_identity(comp / "vae"), text_id, max_len, layers)


def latent_key(item: dict, enc: Encoders, dtype: str, policy: ResizePolicy) -> str:
    parts = [item["pixel_sha256"] or item["sha256"], enc.vae_id, "x".join(map(str, item["bucket"])), dtype,
             policy.crop, str(policy.upscale), ",".join(map(str, policy.alpha_background))]
    return sha256_bytes("|".join(parts).encode())[:40]


def text_key(caption: str, enc: Encoders, dtype: str) -> str:
    return sha256_bytes(f"{caption}|{enc.text_id}|{enc.max_sequence_length}|{dtype}".encode())[:40]


def _read_index(cache_dir: Path) -> dict:
    path = cache_dir / INDEX
    if not path.is_file():
        return {"version": CACHE_VERSION, "entries": {}}
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"version": CACHE_VERSION, "entries": {}}  # a torn index only costs re-encoding
    return index if index.get("version") == CACHE_VERSION else {"version": CACHE_VERSION, "entries": {}}


def _valid(cache_dir: Path, index: dict, key: str) -> bool:
    entry = index["entries"].get(key)
    path = cache_dir / entry["file"] if entry else None
    return bool(entry) and path.is_file() and path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def _save(cache_dir: Path, index: dict, key: str, kind: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    rel = f"{kind}/{key}.safetensors"
    path = atomic_save_safetensors(cache_dir / rel, tensors, {k: str(v) for k, v in meta.items()})
    index["entries"][key] = {"file": rel, "kind": kind, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                             **meta}


def _image_tensor(source_root: Path, item: dict, policy: ResizePolicy) -> torch.Tensor:
    loaded = load_image(source_root / item["file"], alpha_background=policy.alpha_background)
    image, _ = resize_and_crop(loaded.image, tuple(item["bucket"]), policy)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return x.unsqueeze(1)  # (3, T=1, H, W)


def build_cache(manifest: dict, model: str | Path, cache_dir: str | Path, *, dtype: str = "bf16",
                batch_size: int = 8, device: str = "cpu",
                progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Encode what is missing or invalid; returns a report (counts, seconds, size, what was loaded)."""
    if dtype not in DTYPES:
        raise WeightshopError(f"unknown cache dtype {dtype!r}: expected {', '.join(DTYPES)}")
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    source_root = Path(manifest["source"])
    if source_root.is_file():
        source_root = source_root.parent
    policy = ResizePolicy.from_any(manifest["policy"])
    enc = Encoders.for_model(model)
    items = usable_items(manifest)
    if not items:
        raise WeightshopError("the manifest has no usable items (every image was rejected)")
    index = _read_index(cache_dir)
    wanted_lat = {latent_key(i, enc, dtype, policy): i for i in items}
    captions = sorted({i.get("caption") or "" for i in items} | {""})
    wanted_txt = {text_key(c, enc, dtype): c for c in captions}
    todo_lat = [k for k in wanted_lat if not _valid(cache_dir, index, k)]
    todo_txt = [k for k in wanted_txt if not _valid(cache_dir, index, k)]
    loaded = []
    torch_dtype = DTYPES[dtype]
    progress = progress or (lambda *_: None)

    if todo_lat:
        from weightshop.models.loading import load_vae

        vae = load_vae(enc.components).to(device)
        loaded.append("vae")
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
        by_bucket: dict[tuple, list[str]] = {}
        for k in todo_lat:
            by_bucket.setdefault(tuple(wanted_lat[k]["bucket"]), []).append(k)
        done = 0
        for keys in by_bucket.values():
            for s in range(0, len(keys), batch_size):
                chunk = keys[s:s + batch_size]
                x = torch.stack([_image_tensor(source_root, wanted_lat[k], policy) for k in chunk]).to(device)
                with torch.no_grad():
                    z = vae.encode(x).latent_dist.mode()[:, :, 0].float().cpu()
                z = (z - mean) / std
                for k, latents in zip(chunk, z):
                    item = wanted_lat[k]
                    _save(cache_dir, index, k, "latents", {"latents": latents.to(torch_dtype)},
                          {"image": item["file"], "bucket": "x".join(map(str, item["bucket"])), "dtype": dtype})
                done += len(chunk)
                progress("latents", done, len(todo_lat))
                atomic_write_json(cache_dir / INDEX, index)  # an interrupted run keeps what it finished
        del vae
        gc.collect()

    if todo_txt:
        from weightshop.models.loading import load_text_encoder, text_pipeline

        text_encoder, tokenizer, layers = load_text_encoder(enc.components)
        pipe = text_pipeline(text_encoder.to(device), tokenizer, layers)
        loaded.append("text_encoder")
        for s in range(0, len(todo_txt), batch_size):
            chunk = todo_txt[s:s + batch_size]
            with torch.no_grad():
                embeds, mask = pipe.encode_prompt([wanted_txt[k] for k in chunk], device=torch.device(device),
                                                  max_sequence_length=enc.max_sequence_length)
            for k, e, m in zip(chunk, embeds.cpu(), mask.cpu()):
                _save(cache_dir, index, k, "text", {"embeds": e.to(torch_dtype), "mask": m},
                      {"caption": wanted_txt[k], "dtype": dtype})
            progress("captions", min(s + batch_size, len(todo_txt)), len(todo_txt))
        del pipe, text_encoder
        gc.collect()

    index.update(model=str(model), vae_id=enc.vae_id, text_id=enc.text_id, dtype=dtype,
                 max_sequence_length=enc.max_sequence_length, manifest_sha256=manifest_hash(manifest),
                 items={i["file"]: {"latents": latent_key(i, enc, dtype, policy),
                                    "text": text_key(i.get("caption") or "", enc, dtype)} for i in items},
                 empty_caption=text_key("", enc, dtype))
    live = set(wanted_lat) | set(wanted_txt)
    index["total_bytes"] = sum(e["bytes"] for k, e in index["entries"].items() if k in live)
    atomic_write_json(cache_dir / INDEX, index)
    return {"cache": str(cache_dir), "items": len(items), "captions": len(captions),
            "encoded_latents": len(todo_lat), "encoded_captions": len(todo_txt), "loaded": loaded,
            "total_bytes": index["total_bytes"], "seconds": time.perf_counter() - start}


@dataclass
class CachedSet:
    """A complete cache, ready for training: no VAE or text encoder needed."""

    latents: dict[str, torch.Tensor]  # file -> (C, h, w), normalised
    embeds: dict[str, tuple[torch.Tensor, torch.Tensor]]  # file -> (embeds, mask)
    empty: tuple[torch.Tensor, torch.Tensor]  # the empty caption, for caption dropout
    buckets: dict[str, tuple[int, int]]


def load_cache(cache_dir: str | Path, manifest: dict) -> CachedSet:
    """Read a cache for a manifest; raises, naming what is missing or corrupt, unless it is complete."""
    from safetensors.torch import load_file

    cache_dir = Path(cache_dir)
    index = _read_index(cache_dir)
    if index.get("manifest_sha256") != manifest_hash(manifest):
        raise WeightshopError(f"{cache_dir} was built for another version of the manifest: run `weightshop data cache`")
    bad = [k for keys in index["items"].values() for k in keys.values() if not _valid(cache_dir, index, k)]
    if not _valid(cache_dir, index, index["empty_caption"]):
        bad.append(index["empty_caption"])
    if bad:
        raise WeightshopError(f"{cache_dir}: {len(bad)} cache files are missing or corrupt: run `weightshop data cache`")

    def read(key):
        return load_file(str(cache_dir / index["entries"][key]["file"]))

    latents, embeds, buckets = {}, {}, {}
    for file, keys in index["items"].items():
        latents[file] = read(keys["latents"])["latents"]
        t = read(keys["text"])
        embeds[file] = (t["embeds"], t["mask"])
        buckets[file] = tuple(int(v) for v in index["entries"][keys["latents"]]["bucket"].split("x"))
    e = read(index["empty_caption"])
    return CachedSet(latents, embeds, (e["embeds"], e["mask"]), buckets)
