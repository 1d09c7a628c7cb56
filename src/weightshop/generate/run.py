"""Generate images from a loaded Krea 2 checkpoint with its sampler preset and full provenance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

import weightshop
from weightshop.errors import WeightshopError
from weightshop.generate.fast import FastPath, runs_own_loop, sample, timed, to_pil
from weightshop.generate.metadata import save_image
from weightshop.generate.text import PromptCache, compact, pad_to
from weightshop.lora.apply import AppliedLora, LoraRequest, apply_loras
from weightshop.models.loading import LoadedModel
from weightshop.models.schedule import sampling_sigmas
from weightshop.models.spec import SamplerPreset, validate_size


@dataclass
class GenerateRequest:
    """What to make. Unset sampler fields take the checkpoint's preset; unset sizes the model's default."""

    prompts: list[str]
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    mu: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 1
    loras: list[LoraRequest] = field(default_factory=list)
    max_sequence_length: int | None = None
    release_text_encoder: bool = False  # the same as text_encoder="release" (kept for existing callers)
    text_encoder: str | None = None  # keep | offload | release after encoding; None: the model's placement mode
    fast: FastPath | None = None  # how to render (`generate.fast`); None: the defaults, within 1e-3 of stock

    def text_encoder_mode(self, default: str = "keep") -> str:
        """What becomes of the text encoder after encoding: release_text_encoder wins, then text_encoder, then
        the mode the model was placed with."""
        from weightshop.models.placement import TEXT_ENCODER_MODES, check_choice

        mode = "release" if self.release_text_encoder else (self.text_encoder or default)
        return check_choice("text encoder mode", mode, TEXT_ENCODER_MODES)

    def validate(self) -> None:
        if not self.prompts or any(not isinstance(p, str) for p in self.prompts):
            raise WeightshopError("give at least one prompt (--prompt TEXT or --prompt-file FILE)")
        if not self.seeds:
            raise WeightshopError("give at least one seed")
        if self.batch_size < 1:
            raise WeightshopError(f"batch size must be >= 1, got {self.batch_size}")
        self.text_encoder_mode()
        if self.fast is not None:
            self.fast.validate()
        self.check_loras()

    def check_loras(self) -> None:
        """Each LoRA file exists, is a complete safetensors file (never a pickle) and holds LoRA tensors.

        Header reads only, so a bad file fails in a moment, before the model is loaded (call validate()
        first, as the CLI does); the full per-module check comes when the LoRAs are applied.
        """
        import math

        from weightshop.lora.files import check_lora_file

        for lora in self.loras:
            if not math.isfinite(lora.strength):
                raise WeightshopError(f"LoRA {lora.path}: strength {lora.strength} is not a finite number")
            check_lora_file(lora.path)


@dataclass
class Plan:
    """The resolved settings of a request on one model: exactly what the images record."""

    preset: SamplerPreset
    width: int
    height: int
    mu: float
    max_sequence_length: int
    jobs: list[tuple[str, int]]  # (prompt, seed), in output order


def plan(model: LoadedModel, request: GenerateRequest) -> Plan:
    request.validate()
    preset = model.checkpoint.preset.with_overrides(request.steps, request.guidance, request.mu)
    width = request.width or model.default_size
    height = request.height or model.default_size
    validate_size(height, width, model.size_multiple, model.family)
    mu = preset.mu_for(height, width, model.vae_scale_factor, model.pipeline.patch_size, model.family.shift)
    max_len = request.max_sequence_length or model.max_sequence_length
    jobs = [(p, s) for p in request.prompts for s in request.seeds]
    return Plan(preset, width, height, mu, max_len, jobs)


@dataclass
class GeneratedImage:
    image: Image.Image
    record: dict
    path: Path | None = None


def image_record(model: LoadedModel, plan_: Plan, prompt: str, seed: int, negative: str | None,
                 loras: list[AppliedLora], dtype: torch.dtype) -> dict:
    """The generation record every PNG carries (`generate`, the eval cache and the server write it)."""
    return {
        "weightshop_version": weightshop.__version__,
        "model": {
            "id": model.source.model_id,
            "name": model.name,
            "checkpoint": model.checkpoint.name,
            "transformer_sha256": model.transformer_hash(),
        },
        "loras": [l.as_dict() for l in loras],
        "prompt": prompt,
        "negative_prompt": negative if plan_.preset.guidance > 0 else None,
        "seed": seed,
        "steps": plan_.preset.steps,
        "guidance": plan_.preset.guidance,
        "mu": plan_.mu,
        "width": plan_.width,
        "height": plan_.height,
        "max_sequence_length": plan_.max_sequence_length,
        "sampler": "flow-match euler",
        "dtype": str(dtype).removeprefix("torch."),
    }


def _use_mu_override(model: LoadedModel, mu: float | None) -> None:
    """Pin mu on the scheduler when asked (the pipeline call has no mu argument)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model.pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.family.scheduler_config(mu))


def encode(cache: PromptCache, prompts: list[str], text_encoder: str = "keep") -> None:
    """Encode the prompts not cached yet with the text encoder brought to the device (`placement.encoder_ready`),
    then keep, offload or release it (`placement.after_encoding`)."""
    from weightshop.models.placement import after_encoding, encoder_ready

    if cache.missing(prompts):
        encoder_ready(cache.pipeline)
        with torch.no_grad():  # the encoder's weights require grad as loaded: autograd would keep every layer
            cache.warm(prompts)
    after_encoding(cache.pipeline, text_encoder)


def generate(model: LoadedModel, request: GenerateRequest, out_dir: str | Path | None = None,
             on_step: Callable[[int, int], None] | None = None,
             prompt_cache: PromptCache | None = None) -> list[GeneratedImage]:
    """Render every (prompt, seed) of the request; write PNG + sidecar into out_dir when given.

    Each image draws its starting noise from its own generator seeded with its seed, so an image
    depends on its seed alone, not on its batch companions.
    """
    p = plan(model, request)
    pipe = model.pipeline
    fast = request.fast or FastPath()
    own_loop = runs_own_loop(model, fast)
    loras = apply_loras(pipe, request.loras) if request.loras else []
    _use_mu_override(model, request.mu)
    cache = prompt_cache or PromptCache(pipe, p.max_sequence_length, str(model.source.components), trim=fast.trim_text)
    negative = request.negative_prompt or ""
    guided = p.preset.guidance > 0
    with timed("encode"):
        encode(cache, [prompt for prompt, _ in p.jobs] + ([negative] if guided else []),
               request.text_encoder_mode(model.placement.text_encoder))

    from weightshop.models.placement import execution_device

    device = execution_device(pipe)
    dtype = pipe.transformer.dtype
    total_steps = len(p.jobs) * p.preset.steps
    done = 0
    results: list[GeneratedImage] = []
    out = Path(out_dir) if out_dir is not None else None
    for start in range(0, len(p.jobs), request.batch_size):
        chunk = p.jobs[start:start + request.batch_size]
        embeds, mask = cache.get([prompt for prompt, _ in chunk])
        neg = cache.get([negative] * len(chunk)) if guided else None
        if fast.trim_text and not cache.trim:  # a caller's cache of padded prompts: trimmed here instead
            embeds, mask = compact(embeds, mask)
            neg = compact(*neg) if neg else None

        def step_callback(_i, n=len(chunk)):
            nonlocal done
            done += n
            if on_step:
                on_step(done, total_steps)

        generators = [torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(s) for _, s in chunk]
        images = render_batch(model, p, embeds, mask, neg, generators, fast, on_step=step_callback)
        for (prompt, seed), image in zip(chunk, images):
            record = image_record(model, p, prompt, seed, negative, loras, dtype)
            record.update(speed_record(pipe, fast, own_loop))
            item = GeneratedImage(image, record)
            if out is not None:
                index = len(results)
                item.path = save_image(out / f"{index:04d}_{model.checkpoint.name}_s{seed}.png", image, record)
            results.append(item)
    return results


def render_batch(model: LoadedModel, p: Plan, embeds: torch.Tensor, mask: torch.Tensor,
                 neg: tuple[torch.Tensor, torch.Tensor] | None, generators: list[torch.Generator], fast: FastPath,
                 on_step: Callable[[int], None] | None = None) -> list[Image.Image]:
    """One batch of images from its text conditioning, as `generate` renders it (the server's worker calls this
    too, so both make the same pixels): weightshop's own loop when every model is resident, else the stock
    pipeline call, whose loop gives both guidance branches one set of positions (one text length)."""
    from weightshop.models.placement import execution_device

    pipe = model.pipeline
    device = execution_device(pipe)
    if runs_own_loop(model, fast):
        return to_pil(pipe, sample(
            pipe, embeds.to(device), mask.to(device), height=p.height, width=p.width, steps=p.preset.steps,
            guidance=p.preset.guidance, mu=p.mu, generators=generators, negative=neg, fast=fast, on_step=on_step))
    kwargs = {}
    if neg is not None:
        length = max(embeds.shape[1], neg[0].shape[1])
        embeds, mask = pad_to(embeds, mask, length)
        kwargs["negative_prompt_embeds"], kwargs["negative_prompt_embeds_mask"] = pad_to(*neg, length)

    def callback(_pipe, i, _t, tensors):
        if on_step:
            on_step(i)
        return tensors

    return pipe(prompt_embeds=embeds.to(device), prompt_embeds_mask=mask.to(device), height=p.height, width=p.width,
                num_inference_steps=p.preset.steps, guidance_scale=p.preset.guidance, generator=generators,
                max_sequence_length=p.max_sequence_length, callback_on_step_end=callback,
                **{k: v.to(device) for k, v in kwargs.items()}).images


def speed_record(pipe, fast: FastPath, own_loop: bool) -> dict:
    """What the image record adds when a setting changed the pixels beyond float rounding: the step cache (own
    loop only) and float8 / int8 matmuls (`fast.speed_up`). Empty for the defaults, so their records stay as
    they were."""
    out = {}
    if own_loop and fast.step_cache > 0:
        out["step_cache"] = fast.step_cache
    changed = {k: v for k, v in getattr(pipe, "_weightshop_speed", {}).items() if k in ("fp8_matmul", "int8_matmul")}
    if changed:
        out["matmuls"] = changed
    return out


def expected_sigmas(model: LoadedModel, request: GenerateRequest):
    """The sigma schedule a request will sample on (for reports and tests)."""
    p = plan(model, request)
    return sampling_sigmas(p.preset.steps, p.mu)
