"""The real tier: CLIP-T, CLIP-I and DINO in the DreamBooth protocol, DINOv2 similarity, and PickScore as an
optional preference scorer, computed with real weights the user already has, never downloaded here.

Protocol (Ruiz et al., "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for Subject-Driven Generation",
CVPR 2023, section 4.1; the dataset and prompts are in github.com/google/dreambooth):

- **CLIP-T** (prompt fidelity): per generated image, the cosine similarity between its CLIP image embedding and
  the CLIP text embedding of its prompt; the set's figure is the mean. The prompt is scored with the subject's
  identifier removed (`strip`: the trigger words, e.g. "sks"): a rare token the CLIP text encoder never learnt
  says nothing about the prompt. The paper reports raw cosines (0.305 for DreamBooth on Stable Diffusion),
  not CLIPScore's 2.5 * max(cos, 0) nor 100 * cos.
- **CLIP-I** (subject fidelity): the mean pairwise cosine similarity between the CLIP image embeddings of the
  generated images and of the real (training, reference) images, averaged over every generated x reference pair.
  Per image: its mean over the references (so the set's mean is the mean over all pairs).
- **DINO** (subject fidelity, the paper's preferred one: a self-supervised model is not trained to ignore the
  differences between two objects of the same class, as CLIP is): the same pairwise mean with the CLS embedding
  of DINO ViT-S/16 (`facebook/dino-vits16`, which the paper names).
- **DINOv2**: the same pairwise mean with a DINOv2 CLS embedding (`facebook/dinov2-base` by default); not in
  the paper, which predates DINOv2, but the figure later work (e.g. DreamBench++) reports beside DINO.

Which CLIP: the paper names ViT-S/16 for DINO but no CLIP backbone. weightshop defaults to OpenAI's ViT-L/14
(`openai/clip-vit-large-patch14`); reproductions differ (DreamBench++'s code, for one, uses ViT-B/32), and CLIP-T
and CLIP-I move with the backbone, so compare a number with a published one only when its paper used the same
CLIP, and pass `clip=` to match it. Every result records the backend and the weights' sha256 (`identity`), so
two runs of weightshop compare only when they used the same weights.

Preprocessing: CLIP uses the model's own image processor (preprocessor_config.json: shorter side to 224 bicubic,
centre crop 224, CLIP's mean/std) through transformers' PIL backend, and its tokenizer (truncated at 77 tokens).
DINO and DINOv2 use the evaluation transform of the DINO repository, which is also DINOv2's own processor: shorter
side to 256 (bicubic), centre crop 224, ImageNet mean/std, written here in PIL/numpy. Everything runs in float32.

PickScore (Kirstain et al. 2023, `yuvalkirstain/PickScore_v1`, a CLIP ViT-H/14 fine-tuned on human preferences,
with the processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`) is the optional preference scorer: it is a
transformers CLIPModel, so it loads offline like CLIP. Its figure is logit_scale.exp() * cosine (about 100 x cos),
the scale its authors use. It runs only when asked for (`RealConfig.pickscore`). Other preference scorers
(HPSv2, ImageReward, the LAION aesthetic predictor) need open_clip or their own packages and are not built in;
any object with `name`, `identity`, `per_image` and `score` (judge.base.Judge) can be passed beside these.

Weights: a local folder (a transformers save: config.json + model.safetensors, plus the processor's and
tokenizer's files) or a hub id looked up in the Hugging Face cache only (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub, read when called). Nothing is downloaded, whatever HF_HUB_OFFLINE says; to use a model,
fetch it first, e.g. `hf download openai/clip-vit-large-patch14`. Only safetensors weights are read. A metric
whose weights are missing is reported as "<metric>: skipped: <why>" (`real_judges`), never computed with another
model instead.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.io import cached_sha256, read_json
from weightshop.judge.base import Job, JudgeIdentity, means

DREAMBOOTH_CLIP = "openai/clip-vit-large-patch14"
DINO_V1 = "facebook/dino-vits16"
DINO_V2 = "facebook/dinov2-base"
PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

VERSION = "1"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MODEL_FILES = ("config.json",)  # plus model.safetensors or its index
PROCESSOR_FILES = ("preprocessor_config.json",)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DINO_CROP = 224
BATCH = 32


# ---------------------------------------------------------------------------------------------- finding weights

def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub would pick it, read from the environment now (not at import)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.path.expanduser(env["HF_HUB_CACHE"])))
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(os.path.expanduser(env["HUGGINGFACE_HUB_CACHE"])))
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _has_weights(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() or (folder / WEIGHTS_INDEX).is_file()


def _from_cache(repo_id: str, files: Sequence[str], weights: bool) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    if not cache.is_dir():
        return None
    try:
        found = [try_to_load_from_cache(repo_id, f, cache_dir=cache) for f in files]
        if weights:
            w = try_to_load_from_cache(repo_id, WEIGHTS, cache_dir=cache)
            if not isinstance(w, str):
                w = try_to_load_from_cache(repo_id, WEIGHTS_INDEX, cache_dir=cache)
            found.append(w)
    except Exception:  # an id huggingface_hub refuses (HFValidationError), an unreadable cache: not there
        return None
    if not all(isinstance(f, str) for f in found):
        return None
    folder = Path(found[0]).parent  # the snapshot folder: every file of one revision lies in it
    return folder if all(Path(f).parent == folder for f in found) else None


def _looks_like_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text)) and ".." not in text


def find_model(name_or_path: str | os.PathLike, *, files: Sequence[str] = MODEL_FILES,
               weights: bool = True) -> Path | None:
    """The folder holding a model's files, or None: a local folder as given, else a hub id looked up in the
    Hugging Face cache (never downloaded; `hf download <id>` puts it there). `files` must all be present, and
    model.safetensors (or its shard index) when `weights`; a folder or snapshot without them is not a match.
    """
    text = os.path.expanduser(str(name_or_path))
    local = Path(text)
    if local.is_dir():
        ok = all((local / f).is_file() for f in files) and (not weights or _has_weights(local))
        return local if ok else None
    if local.exists() or not _looks_like_repo_id(text):
        return None
    return _from_cache(text, files, weights)


def missing_reason(name: str, files: Sequence[str] = MODEL_FILES, weights: bool = True) -> str:
    """Why find_model(name) found nothing, in one line a user can act on."""
    text = os.path.expanduser(str(name))
    local = Path(text)
    if local.is_dir():
        need = [f for f in files if not (local / f).is_file()]
        if weights and not _has_weights(local):
            need.append(f"{WEIGHTS} (only safetensors weights are read)")
        return f"{name} lacks {', '.join(need)}"
    if local.exists() or not _looks_like_repo_id(text):
        return f"{name} is not a model folder or a hub id"
    hint = ""
    if _from_cache(text, files, weights=False) is not None:
        hint = f"; its cached copy has no {WEIGHTS} (only safetensors weights are read)"
    return (f"{name} is not in the HF cache ({hub_cache_dir()}) or at a given path{hint} "
            f"(hf download {name})")


def _require(name: str | os.PathLike, files: Sequence[str] = MODEL_FILES, weights: bool = True) -> Path:
    folder = find_model(name, files=files, weights=weights)
    if folder is None:
        raise WeightshopError(missing_reason(str(name), files, weights))
    return folder


def weights_sha256(folder: str | os.PathLike) -> str:
    """sha256 of a model's model.safetensors; for a sharded model, sha256 of its shards' sha256s in name order."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return cached_sha256(folder / WEIGHTS)
    shards = sorted(set(read_json(folder / WEIGHTS_INDEX)["weight_map"].values()))
    return hashlib.sha256("\n".join(f"{s} {cached_sha256(folder / s)}" for s in shards).encode()).hexdigest()


def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------------- embeddings

def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [im.convert("RGB") for im in images]


def _chunks(items: Sequence, n: int = BATCH):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _normalised(chunks: list) -> np.ndarray:
    import torch

    x = torch.cat(chunks).float()
    return torch.nn.functional.normalize(x, dim=-1).cpu().numpy().astype(np.float64)


class ClipEmbedder:
    """A CLIP model with its image processor and tokenizer: L2-normalised image and text embeddings.

    `processor`: where the image processor and tokenizer live when not beside the weights (PickScore's).
    """

    def __init__(self, model: str | os.PathLike = DREAMBOOTH_CLIP, processor: str | os.PathLike | None = None,
                 device: str | None = None):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.name = str(model)
        self.folder = _require(model)
        pfolder = self.folder if processor is None else _require(processor, PROCESSOR_FILES, weights=False)
        self.device = _device(device)
        self.model = CLIPModel.from_pretrained(self.folder, use_safetensors=True, local_files_only=True,
                                               dtype="float32").to(self.device).eval()
        # backend="pil": transformers' PIL/numpy processor, never the torchvision one
        self.image_processor = AutoImageProcessor.from_pretrained(pfolder, backend="pil", local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(pfolder, local_files_only=True)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.weights_sha256 = weights_sha256(self.folder)

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) unit image embeddings."""
        import torch

        out = []
        with torch.inference_mode():
            for chunk in _chunks(_rgb(images)):
                pixels = self.image_processor(images=chunk, return_tensors="pt")["pixel_values"]
                out.append(self.model.get_image_features(pixel_values=pixels.to(self.device)).pooler_output)
        return _normalised(out)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) unit text embeddings (each text truncated to the model's 77 tokens)."""
        import torch

        out = []
        with torch.inference_mode():
            for chunk in _chunks(list(texts)):
                tokens = self.tokenizer(list(chunk), padding=True, truncation=True, max_length=self.max_length,
                                        return_tensors="pt")
                out.append(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                        attention_mask=tokens["attention_mask"].to(self.device)
                                                        ).pooler_output)
        return _normalised(out)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def dino_pixels(images: Sequence[Image.Image], crop: int = DINO_CROP) -> np.ndarray:
    """(N, 3, crop, crop) float32: the DINO evaluation transform (shorter side to crop * 256 / 224 bicubic,
    centre crop, ImageNet mean/std), in PIL/numpy."""
    short = round(crop * 256 / 224)
    rows = []
    for im in _rgb(images):
        scale = short / min(im.size)
        w, h = max(crop, round(im.width * scale)), max(crop, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        im = im.crop((left, top, left + crop, top + crop))
        x = (np.asarray(im, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        rows.append(x.transpose(2, 0, 1))
    return np.stack(rows).astype(np.float32)


class DinoEmbedder:
    """A DINO (transformers ViTModel) or DINOv2 (Dinov2Model) backbone: L2-normalised CLS embeddings."""

    def __init__(self, model: str | os.PathLike = DINO_V1, crop: int = DINO_CROP, device: str | None = None):
        from transformers import AutoConfig, AutoModel

        self.name = str(model)
        self.folder = _require(model)
        self.device = _device(device)
        self.crop = crop
        config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        self.kind = "dinov2" if config.model_type.startswith("dinov2") else "dino"
        extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
        self.model = AutoModel.from_pretrained(self.folder, use_safetensors=True, local_files_only=True,
                                               dtype="float32", **extra).to(self.device).eval()
        # a ViT has fixed position embeddings for config.image_size; DINOv2 always interpolates its own
        self.interpolate = config.model_type == "vit" and getattr(config, "image_size", crop) != crop
        self.weights_sha256 = weights_sha256(self.folder)

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in _chunks(list(images)):
                pixels = torch.from_numpy(dino_pixels(chunk, self.crop)).to(self.device)
                kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
                out.append(self.model(pixel_values=pixels, **kwargs).last_hidden_state[:, 0])
        return _normalised(out)


# ------------------------------------------------------------------------------------------------------ judges

def strip_words(prompt: str, words: Sequence[str]) -> str:
    """The prompt without the given words (whole words, case-insensitive), spaces tidied."""
    for w in words:
        if w.strip():
            prompt = re.sub(rf"(?<![\w]){re.escape(w.strip())}(?![\w])", " ", prompt, flags=re.IGNORECASE)
    prompt = re.sub(r"\s+([,.;:!?])", r"\1", prompt)
    return re.sub(r"\s+", " ", prompt).strip()


def _words(strip: str | Sequence[str] | None) -> tuple[str, ...]:
    if strip is None:
        return ()
    return (strip,) if isinstance(strip, str) else tuple(strip)


def _clip(model: str | os.PathLike | ClipEmbedder, device: str | None) -> ClipEmbedder:
    return model if isinstance(model, ClipEmbedder) else ClipEmbedder(model, device=device)


def _references(references: Sequence[Image.Image], what: str) -> list[Image.Image]:
    references = list(references)
    if not references:
        raise WeightshopError(f"{what} needs reference (training) images, found none")
    return references


class ClipTextJudge:
    """CLIP-T: per image, cos(CLIP image embedding, CLIP text embedding of its prompt without `strip`)."""

    name = "clip-t"
    metric = "clip_t"

    def __init__(self, model: str | os.PathLike | ClipEmbedder = DREAMBOOTH_CLIP,
                 strip: str | Sequence[str] | None = None, device: str | None = None):
        self.clip = _clip(model, device)
        self.strip = _words(strip)
        self.identity = JudgeIdentity(self.clip.name, self.clip.weights_sha256, VERSION)

    def prompts(self, jobs: Sequence[Job]) -> list[str]:
        return [strip_words(j.prompt, self.strip) for j in jobs]

    def cosines(self, images: list[Image.Image], jobs: list[Job]) -> np.ndarray:
        if len(images) != len(jobs):
            raise WeightshopError(f"{self.name}: {len(images)} images but {len(jobs)} prompts")
        if not images:
            return np.zeros(0)
        return (self.clip.images(images) * self.clip.texts(self.prompts(jobs))).sum(-1)

    def per_image(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, list[float]]:
        return {self.metric: [float(x) for x in self.cosines(images, jobs)]}

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]:
        return means(self.per_image(images, jobs))


class PickScoreJudge(ClipTextJudge):
    """PickScore (optional preference scorer): logit_scale.exp() * cos(image, prompt) with PickScore's CLIP."""

    name = "pickscore"
    metric = "pickscore"

    def __init__(self, model: str | os.PathLike | ClipEmbedder = PICKSCORE,
                 processor: str | os.PathLike = PICKSCORE_PROCESSOR, strip: str | Sequence[str] | None = None,
                 device: str | None = None):
        clip = model if isinstance(model, ClipEmbedder) else ClipEmbedder(model, processor=processor, device=device)
        super().__init__(clip, strip=strip)

    def per_image(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, list[float]]:
        return {self.metric: [float(x) for x in self.clip.logit_scale * self.cosines(images, jobs)]}


class _PairwiseJudge:
    """Per image: the mean cosine to every reference image's embedding (DreamBooth's pairwise mean)."""

    name = ""
    metric = ""

    def __init__(self, embedder, references: Sequence[Image.Image]):
        self.embedder = embedder
        self.references = embedder.images(_references(references, self.name or "this judge"))
        self.identity = JudgeIdentity(embedder.name, embedder.weights_sha256, VERSION)

    def similarities(self, images: list[Image.Image]) -> np.ndarray:
        """(N images, M references) cosine similarities."""
        if not images:
            return np.zeros((0, len(self.references)))
        return self.embedder.images(images) @ self.references.T

    def per_image(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, list[float]]:
        return {self.metric: [float(x) for x in self.similarities(images).mean(1)]}

    def score(self, images: list[Image.Image], jobs: list[Job]) -> dict[str, float]:
        return means(self.per_image(images, jobs))


class ClipImageJudge(_PairwiseJudge):
    """CLIP-I: per image, the mean cosine between its CLIP image embedding and each reference image's."""

    name = "clip-i"
    metric = "clip_i"

    def __init__(self, references: Sequence[Image.Image], model: str | os.PathLike | ClipEmbedder = DREAMBOOTH_CLIP,
                 device: str | None = None):
        super().__init__(_clip(model, device), references)


class DinoJudge(_PairwiseJudge):
    """DINO (ViT-S/16 in the paper) or DINOv2: per image, the mean cosine between its CLS embedding and each
    reference image's. The metric is "dino" or "dinov2", from the model's type."""

    def __init__(self, references: Sequence[Image.Image], model: str | os.PathLike | DinoEmbedder = DINO_V1,
                 crop: int = DINO_CROP, device: str | None = None):
        embedder = model if isinstance(model, DinoEmbedder) else DinoEmbedder(model, crop=crop, device=device)
        self.name = self.metric = embedder.kind
        super().__init__(embedder, references)


# ---------------------------------------------------------------------------------------------- the whole tier

@dataclass
class RealConfig:
    """What the real tier computes. A model set to None is not asked for (and not reported); a model asked for
    but missing is reported as skipped. `references`: the training images (CLIP-I, DINO, DINOv2 need them);
    `strip`: the trigger words removed from prompts for CLIP-T and PickScore."""

    references: list = field(default_factory=list)
    strip: tuple[str, ...] | list[str] | str = ()
    clip: str | None = DREAMBOOTH_CLIP
    dino: str | None = DINO_V1
    dinov2: str | None = DINO_V2
    pickscore: str | None = None  # opt-in: PICKSCORE
    pickscore_processor: str = PICKSCORE_PROCESSOR
    device: str | None = None
    dino_crop: int = DINO_CROP


def _skip(metric: str, reason: str) -> str:
    return f"{metric}: skipped: {reason}"


def _load_error(name: str, e: Exception) -> str:
    if isinstance(e, WeightshopError):
        return str(e)
    return f"{name} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def real_judges(config: RealConfig | dict | None = None) -> tuple[list, list[str]]:
    """(judges, skipped): every real-tier judge whose weights are here, and one "<metric>: skipped: <why>" line
    for each one asked for that cannot run (weights not found or not loadable, no reference images). Never
    raises for missing weights and never substitutes another model."""
    if config is None:
        config = RealConfig()
    elif isinstance(config, dict):
        config = RealConfig(**config)
    judges: list = []
    skipped: list[str] = []
    refs = list(config.references or [])

    if config.clip:
        try:
            clip = ClipEmbedder(config.clip, device=config.device)
        except Exception as e:  # missing or unloadable weights: said, not substituted
            reason = _load_error(config.clip, e)
            skipped += [_skip("clip_t", reason), _skip("clip_i", reason)]
        else:
            judges.append(ClipTextJudge(clip, strip=config.strip))
            if refs:
                judges.append(ClipImageJudge(refs, clip))
            else:
                skipped.append(_skip("clip_i", "no reference images given"))

    for metric, model in (("dino", config.dino), ("dinov2", config.dinov2)):
        if not model:
            continue
        if not refs:
            skipped.append(_skip(metric, "no reference images given"))
            continue
        try:
            embedder = DinoEmbedder(model, crop=config.dino_crop, device=config.device)
        except Exception as e:
            skipped.append(_skip(metric, _load_error(model, e)))
            continue
        if embedder.kind != metric:
            skipped.append(_skip(metric, f"{model} is a {embedder.kind} model, not {metric}"))
            continue
        judges.append(DinoJudge(refs, embedder))

    if config.pickscore:
        try:
            judges.append(PickScoreJudge(config.pickscore, processor=config.pickscore_processor,
                                         strip=config.strip, device=config.device))
        except Exception as e:
            skipped.append(_skip("pickscore", _load_error(config.pickscore, e)))
    return judges, skipped
