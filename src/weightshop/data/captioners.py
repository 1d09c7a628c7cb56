"""Automatic captions: a small protocol, a local Qwen3-VL captioner, and a wrapper for plain functions.

A captioner only ever fills captions that are missing or blank unless asked to overwrite; the results go
into the manifest (caption_source "auto"), never into the user's files. Every image handed to a captioner
is the exact RGB picture training will see, with `image.info["weightshop_file"]` set to its manifest path
so ground-truth captioners (synthetic datasets) can look the answer up instead of reading pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from weightshop.data.captions import KREA2_CAPTION_TOKENS, apply_caption_edits
from weightshop.data.images import ImageRejected, load_image
from weightshop.errors import WeightshopError

DEFAULT_CAPTION_PROMPT = (
    "Describe this image in one detailed paragraph for training an image generator: the subjects, their "
    "colours, shapes, textures, quantities, any text, the spatial layout and the background. No preamble."
)


@runtime_checkable
class Captioner(Protocol):
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""


class FunctionCaptioner:
    """Wrap `fn(image) -> str` (or `fn(images) -> list[str]` with batched=True) as a Captioner."""

    def __init__(self, fn: Callable, *, batched: bool = False, name: str | None = None):
        self.fn, self.batched = fn, batched
        self.name = name or getattr(fn, "__name__", "function")

    def caption(self, images: list[Image.Image]) -> list[str]:
        return list(self.fn(images)) if self.batched else [self.fn(im) for im in images]


class Qwen3VLCaptioner:
    """Qwen3-VL (transformers) loaded from a local folder only; nothing is downloaded.

    The folder must hold a transformers checkpoint (config.json, processor files, *.safetensors), e.g.
    one fetched beforehand with `hf download Qwen/Qwen3-VL-8B-Instruct --local-dir PATH`. Weights load on
    the first `caption` call.
    """

    def __init__(self, model_path: str | Path, *, prompt: str = DEFAULT_CAPTION_PROMPT, max_new_tokens: int = 256,
                 device: str | None = None, dtype: str = "bfloat16"):
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise WeightshopError(f"Qwen3-VL captioner weights not found at {path}: expected a local folder with "
                                  f"config.json and *.safetensors (download it first, e.g. `hf download "
                                  f"Qwen/Qwen3-VL-8B-Instruct --local-dir {path}`); weightshop never downloads here")
        if not any(path.glob("*.safetensors")):
            raise WeightshopError(f"Qwen3-VL captioner at {path} has no *.safetensors weights; weightshop reads "
                                  f"weights only from safetensors files")
        self.path, self.prompt, self.max_new_tokens = path, prompt, max_new_tokens
        self.device, self.dtype = device, dtype
        self.name = f"qwen3-vl:{path.name}"
        self._model = self._processor = None

    def _load(self):
        import torch
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, self.dtype) if device != "cpu" else torch.float32
        self._processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
        self._model = Qwen3VLForConditionalGeneration.from_pretrained(
            self.path, local_files_only=True, use_safetensors=True, dtype=dtype).to(device).eval()

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        if self._model is None:
            self._load()
        out = []
        # One image per call: batching would need left padding and gains little next to generation time.
        for image in images:
            messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                     {"type": "text", "text": self.prompt}]}]
            inputs = self._processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                         return_dict=True, return_tensors="pt").to(self._model.device)
            with torch.inference_mode():
                generated = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new_tokens = generated[:, inputs["input_ids"].shape[1]:]
            text = self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
            out.append(" ".join(text.split()))
        return out


def autocaption(manifest: dict, captioner: Captioner, *, overwrite: bool = False, trigger: str | None = None,
                batch_size: int = 4,
                source: str | Path | None = None, tokenizer=None, max_caption_tokens: int = KREA2_CAPTION_TOKENS,
                progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Caption the usable items that lack a caption (all of them with overwrite=True), in the manifest.

    Images are read from `source` (default: the manifest's source folder) with the manifest's alpha
    background. With `trigger`, it is inserted into every usable caption afterwards. Returns
    apply_caption_edits' summary plus the captioner's name.
    """
    if not isinstance(captioner, Captioner):
        raise WeightshopError(f"{type(captioner).__name__} is not a captioner: it needs a "
                              f"caption(images) -> list[str] method")
    root = Path(source or manifest["source"])
    background = tuple(manifest["policy"].get("alpha_background", (255, 255, 255)))
    todo = [i for i in manifest["items"] if i["verdict"] != "rejected"
            and (overwrite or not (i.get("caption") or "").strip())]
    captions: dict[str, str] = {}
    for start in range(0, len(todo), batch_size):
        batch, images = [], []
        for item in todo[start:start + batch_size]:
            try:
                image = load_image(root / item["file"], alpha_background=background).image
            except ImageRejected:
                continue  # the file changed since the check; it keeps its caption state
            image.info["weightshop_file"] = item["file"]
            batch.append(item)
            images.append(image)
        if not images:
            continue
        texts = captioner.caption(images)
        if len(texts) != len(images):
            raise WeightshopError(f"captioner {getattr(captioner, 'name', type(captioner).__name__)} returned "
                                  f"{len(texts)} captions for {len(images)} images")
        for item, text in zip(batch, texts):
            captions[item["file"]] = text
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo), batch[-1]["file"])
    summary = apply_caption_edits(manifest, new_captions=captions, new_source="auto", overwrite=overwrite,
                                  trigger=trigger, tokenizer=tokenizer, max_caption_tokens=max_caption_tokens)
    summary["captioner"] = getattr(captioner, "name", type(captioner).__name__)
    return summary
