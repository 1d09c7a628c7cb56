"""Where a pipeline's weights live while it renders: the memory modes of inference.

Krea 2 at full size is a 25.6 GB bf16 transformer, an ~8.9 GB text encoder and a 0.25 GB VAE; users have 12-24 GB
cards. Each mode trades speed for device memory, and `weightshop.generate.memory` predicts the peak of each:

offload (the transformer, and with model/sequential the other models too)
  none        everything on the device: fastest.
  model       diffusers' model offload: each of text encoder, transformer, VAE is moved to the device for its own
              forward and back to the CPU when the next one runs. Peak: the largest model plus its working set.
  group       diffusers' group offloading of the transformer: its blocks stream to the device one group at a time
              (`group_level` block: `blocks_per_group` transformer blocks; leaf: one Linear/norm at a time); the
              text encoder and VAE stay on the device (the text encoder mode decides about the former).
  sequential  accelerate's leaf-level offload of the transformer and VAE (every weight streams in for its own
              op, slowest); the text encoder sits on the CPU and comes to the device only to encode.
text encoder (needed once per prompt: generation keeps the encoded prompts, weightshop.generate.text)
  keep        stays where the offload mode put it.
  offload     moved to the CPU once the prompts are encoded, brought back for the next new prompt.
  release     dropped once the prompts are encoded (a later new prompt is an error); frees host memory too.
VAE tiling decodes 256 px tiles (overlapping by 64 px) instead of the whole latent; slicing decodes a batch one
image at a time. Both change the decoded image only at tile seams, within a few 1/255 steps.

On a CPU-only machine every mode still runs (the "device" is host memory, so offloading saves nothing there):
tests use that to prove each mode renders the same image as `none`.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass

import torch

from weightshop.errors import WeightshopError

OFFLOAD_MODES = ("none", "model", "group", "sequential")
GROUP_LEVELS = ("block", "leaf")
TEXT_ENCODER_MODES = ("keep", "offload", "release")


def check_choice(what: str, value: str, accepted: tuple[str, ...]) -> str:
    """`value` if it is one of `accepted`, else a WeightshopError that lists them."""
    if value not in accepted:
        raise WeightshopError(f"unknown {what} {value!r}: expected one of {', '.join(accepted)}")
    return value


@dataclass(frozen=True)
class Placement:
    """A pipeline's memory mode: offload, group granularity, VAE tiling/slicing and what becomes of the text
    encoder after encoding. Validated on construction, so a bad value fails before any weight is read."""

    offload: str = "none"
    group_level: str = "block"
    blocks_per_group: int = 1
    vae_tiling: bool = False
    vae_slicing: bool = False
    text_encoder: str = "keep"

    def __post_init__(self) -> None:
        check_choice("offload mode", self.offload, OFFLOAD_MODES)
        check_choice("group offload level", self.group_level, GROUP_LEVELS)
        check_choice("text encoder mode", self.text_encoder, TEXT_ENCODER_MODES)
        if not isinstance(self.blocks_per_group, int) or self.blocks_per_group < 1:
            raise WeightshopError(f"blocks per group must be an integer >= 1, got {self.blocks_per_group!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def place(pipe, device: str, placement: Placement) -> None:
    """Put `pipe`'s models on `device` (or set up their offloading) as `placement` says, and switch VAE tiling."""
    dev = torch.device(device)
    offload = placement.offload
    if offload == "none":
        pipe.to(dev)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=dev)
    elif offload == "group":
        pipe.vae.to(dev)
        if pipe.text_encoder is not None:
            pipe.text_encoder.to(dev)
        level = "block_level" if placement.group_level == "block" else "leaf_level"
        pipe.transformer.to("cpu")
        pipe.transformer.enable_group_offload(
            onload_device=dev, offload_device=torch.device("cpu"), offload_type=level,
            num_blocks_per_group=placement.blocks_per_group if level == "block_level" else None)
    elif offload == "sequential":
        # accelerate's leaf-level offload for the transformer and VAE. Not diffusers' pipeline-wide sequential
        # offload: under it Qwen3-VL's forward fails on its meta-device parameters (checked on CPU), and the text
        # encoder runs once per prompt anyway, so it is moved whole for encoding (`encoder_ready`).
        from accelerate import cpu_offload

        for model in (pipe.transformer, pipe.vae):
            model.to("cpu")
            cpu_offload(model, execution_device=dev)
        if pipe.text_encoder is not None:
            pipe.text_encoder.to("cpu")
        pipe._weightshop_device = dev
    if placement.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    if placement.vae_slicing:
        pipe.vae.enable_slicing()
    else:
        pipe.vae.disable_slicing()
    pipe._weightshop_placement = placement


def placement_of(pipe) -> Placement:
    return getattr(pipe, "_weightshop_placement", None) or Placement()


def _on_device(module, device: torch.device) -> bool:
    return any(p.device == device for p in module.parameters())


def encoder_ready(pipe) -> None:
    """Bring the text encoder to the execution device before encoding, if weightshop moved it off (text encoder
    offload, or the sequential mode). Under model offload diffusers' hooks do it themselves."""
    placement = placement_of(pipe)
    encoder = pipe.text_encoder
    if encoder is None or placement.offload == "model":
        return
    device = execution_device(pipe)
    if not _on_device(encoder, torch.device(device)):
        encoder.to(device)


def after_encoding(pipe, mode: str | None = None) -> None:
    """Apply the text encoder mode once prompts are encoded: keep it, move it to the CPU, or drop it.

    Sequential offload never keeps it on the device (that mode keeps nothing resident). Release drops the
    pipeline's reference; a text encoder shared with another pipeline (`loading.load_pair`) is only moved to the
    CPU, since the other pipeline still encodes with it."""
    placement = placement_of(pipe)
    mode = check_choice("text encoder mode", mode or placement.text_encoder, TEXT_ENCODER_MODES)
    encoder = pipe.text_encoder
    if encoder is None:
        return
    if mode == "keep" and placement.offload != "sequential":
        return
    if any(p.device.type not in ("cpu", "meta") for p in encoder.parameters()):
        encoder.to("cpu")
    if mode == "release":
        pipe.text_encoder = None
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def execution_device(pipe) -> torch.device:
    """Where the pipeline computes. diffusers' `_execution_device` walks every module for offload hooks (about 5 ms
    a call on krea2-nano, a fifth of a step): with nothing offloaded it is simply where the transformer lives."""
    if placement_of(pipe).offload == "none" and pipe.transformer is not None:
        return next(pipe.transformer.parameters()).device
    return getattr(pipe, "_weightshop_device", None) or pipe._execution_device
