"""Deterministic generation cached by content: an image is rendered once per (model, LoRAs, preset, prompt, seed,
size, dtype), whatever run asks for it.

Each image is a PNG with its generation record (as `weightshop generate` writes it) under
`<cache>/<key[:2]>/<key>.png`, written atomically, so an interrupted evaluation keeps every image it finished and
a re-run renders only what is missing. The key is the sha256 of everything that decides the pixels: the
transformer's sha256, each LoRA's sha256 and strength, the checkpoint's preset (steps, guidance, mu), the prompt,
the negative prompt when guidance is on, the seed, the size, the text length and the dtype.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from weightshop.eval.suites import EvalJob
from weightshop.io import cached_sha256, sha256_bytes


@dataclass(frozen=True)
class LoraUse:
    path: Path
    strength: float

    def as_dict(self) -> dict:
        return {"name": self.path.stem, "path": str(self.path), "sha256": cached_sha256(self.path),
                "strength": self.strength}


def image_key(settings: dict, prompt: str, seed: int) -> str:
    return sha256_bytes(json.dumps({**settings, "prompt": prompt, "seed": seed}, sort_keys=True).encode())


def render_settings(model, loras: list[LoraUse], width: int | None, height: int | None,
                    negative: str | None = None, fast=None) -> dict:
    """Everything besides prompt and seed that decides a model's pixels (the key's other half)."""
    from weightshop.generate import GenerateRequest
    from weightshop.generate.run import plan

    p = plan(model, GenerateRequest(prompts=["-"], width=width, height=height))
    guided = p.preset.guidance > 0
    return {"transformer_sha256": model.transformer_hash(), "checkpoint": model.checkpoint.name,
            "loras": [{"sha256": cached_sha256(lora.path), "strength": lora.strength} for lora in loras],
            "steps": p.preset.steps, "guidance": p.preset.guidance, "mu": round(p.mu, 9), "width": p.width,
            "height": p.height, "max_sequence_length": p.max_sequence_length,
            "negative_prompt": (negative or "") if guided else None,
            "dtype": str(model.pipeline.transformer.dtype).removeprefix("torch.")} | (
        {"step_cache": fast.step_cache} if fast is not None and fast.step_cache > 0 else {})  # it moves pixels


class ImageCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str) -> Image.Image | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError:  # a file cut short outside weightshop's atomic writes: render it again
            return None


def render(model, jobs: list[EvalJob], cache: ImageCache, *, loras: list[LoraUse] = (), width: int | None = None,
           height: int | None = None, batch_size: int = 1, progress: Callable[[int, int], None] | None = None,
           fast=None) -> tuple[list[Image.Image], list[str], dict]:
    """The images of `jobs` on `model` with `loras` (cached ones read back, the rest rendered and cached), their
    keys, and {"rendered": n, "cached": n, "seconds_per_image": s (of the rendered ones, or None)}. `fast`: how
    `generate` renders (`generate.fast.FastPath`; a step cache is part of the images' key)."""
    import time

    from weightshop.generate import GenerateRequest, generate
    from weightshop.generate.metadata import save_image
    from weightshop.lora import LoraRequest, apply_loras

    settings = render_settings(model, list(loras), width, height, fast=fast)
    keys = [image_key(settings, job.prompt, job.seed) for job in jobs]
    images: list[Image.Image | None] = [cache.get(k) for k in keys]
    missing = [i for i, image in enumerate(images) if image is None]
    stats = {"rendered": len(missing), "cached": len(jobs) - len(missing), "seconds_per_image": None}
    if not missing:
        return images, keys, stats
    pipe = model.pipeline
    applied = apply_loras(pipe, [LoraRequest(l.path, l.strength) for l in loras]) if loras else []
    lora_record = [l.as_dict() for l in loras]
    start, done = time.perf_counter(), 0
    try:
        by_seed: dict[int, list[int]] = {}
        for i in missing:
            by_seed.setdefault(jobs[i].seed, []).append(i)
        for seed, indices in by_seed.items():  # one request per seed: every image's noise depends on its seed alone
            for chunk_start in range(0, len(indices), batch_size):
                chunk = indices[chunk_start:chunk_start + batch_size]
                request = GenerateRequest(prompts=[jobs[i].prompt for i in chunk], seeds=[seed], width=width,
                                          height=height, batch_size=batch_size, fast=fast)
                for i, made in zip(chunk, generate(model, request)):
                    record = {**made.record, "loras": lora_record, "eval_key": keys[i]}
                    save_image(cache.path(keys[i]), made.image, record)
                    images[i] = made.image
                    done += 1
                    if progress:
                        progress(stats["cached"] + done, len(jobs))
    finally:
        if applied:
            pipe.delete_adapters([a.name for a in applied])
    stats["seconds_per_image"] = (time.perf_counter() - start) / max(1, done)
    return images, keys, stats
