"""The Krea 2 model family: its checkpoints, sampler presets and scheduler settings, in one place.

diffusers 0.42.1's Krea2Pipeline defaults to 28 steps / guidance 4.5 for both checkpoints, and a
FlowMatchEulerDiscreteScheduler built without `max_image_seq_len` computes the wrong mu. weightshop
never relies on those defaults: every pipeline it builds takes its scheduler config and its preset
from here.

Guidance convention (Krea's and diffusers'): v = cond + g * (cond - uncond), on whenever g > 0. This is
classic classifier-free guidance at scale 1 + g, so "cfg 3.5" in Krea's docs is guidance 3.5 here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from weightshop.errors import WeightshopError
from weightshop.models.schedule import ShiftRule, image_tokens

# Krea 2's resolution-aware shift: mu linear in image tokens from (256, 0.5) to (6400, 1.15).
KREA2_SHIFT = ShiftRule(base_tokens=256, max_tokens=6400, base_mu=0.5, max_mu=1.15)


@dataclass(frozen=True)
class SamplerPreset:
    """How a checkpoint is meant to be sampled. mu=None means resolution-aware (from the shift rule)."""

    steps: int
    guidance: float
    mu: float | None = None

    def mu_for(self, height: int, width: int, vae_scale_factor: int = 8, patch_size: int = 2,
               rule: ShiftRule = KREA2_SHIFT) -> float:
        if self.mu is not None:
            return self.mu
        return rule.mu(image_tokens(height, width, vae_scale_factor, patch_size))

    def with_overrides(self, steps: int | None = None, guidance: float | None = None,
                       mu: float | None = None) -> "SamplerPreset":
        changes = {k: v for k, v in dict(steps=steps, guidance=guidance, mu=mu).items() if v is not None}
        preset = replace(self, **changes)
        if preset.steps < 1:
            raise WeightshopError(f"steps must be a positive integer, got {preset.steps}")
        if preset.guidance < 0:
            raise WeightshopError(f"guidance must be >= 0 (0 turns it off), got {preset.guidance}")
        return preset


@dataclass(frozen=True)
class CheckpointSpec:
    name: str
    hub_repo: str
    single_file: str
    is_distilled: bool
    preset: SamplerPreset
    max_side: int
    about: str


RAW = CheckpointSpec(
    name="raw",
    hub_repo="krea/Krea-2-Raw",
    single_file="raw.safetensors",
    is_distilled=False,
    preset=SamplerPreset(steps=52, guidance=3.5, mu=None),
    max_side=1024,
    about="undistilled mid-training checkpoint: the one to fine-tune and train LoRAs on",
)

TURBO = CheckpointSpec(
    name="turbo",
    hub_repo="krea/Krea-2-Turbo",
    single_file="turbo.safetensors",
    is_distilled=True,
    preset=SamplerPreset(steps=8, guidance=0.0, mu=1.15),
    max_side=2048,
    about="8-step distilled checkpoint for fast inference (guidance off, mu fixed at 1.15)",
)


@dataclass(frozen=True)
class FamilySpec:
    """Facts shared by every checkpoint of a model family."""

    name: str
    checkpoints: dict[str, CheckpointSpec]
    shift: ShiftRule
    text_encoder_select_layers: tuple[int, ...]
    max_sequence_length: int
    patch_size: int = 2
    # The full-size VAE's spatial downscale (a model's own VAE config decides for it: `vae_scale`).
    vae_scale_factor: int = 8
    # The side a model makes by default, unless its weightshop.json says otherwise.
    default_size: int = 1024
    # Largest side accepted; the smallest is two tokens, and the multiple comes from the VAE.
    hard_max_side: int = 4096
    transformer_class: str = "Krea2Transformer2DModel"
    vae_class: str = "AutoencoderKLQwenImage"
    text_encoder_class: str = "Qwen3VLModel"
    # Linear layers a quantized export keeps in high precision by default: fnmatch globs on the transformer's
    # (diffusers) module names. Everything else that is a Linear gets quantized.
    quant_keep: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def checkpoint(self, name: str) -> CheckpointSpec:
        try:
            return self.checkpoints[name.lower()]
        except KeyError:
            raise WeightshopError(
                f"unknown checkpoint {name!r}: expected one of {', '.join(self.checkpoints)}"
            ) from None

    def vae_scale(self, vae_config: dict | None = None) -> int:
        """The VAE's spatial downscale from its config, by Krea2Pipeline's own rule: one halving per
        temporal-downsample entry (the default without a config)."""
        if not vae_config or "temperal_downsample" not in vae_config:
            return self.vae_scale_factor
        return 2 ** len(vae_config["temperal_downsample"])

    def size_multiple(self, vae_scale: int | None = None) -> int:
        """Sides must be multiples of this: the VAE's scale times the patch size (16 for Krea 2)."""
        return (vae_scale or self.vae_scale_factor) * self.patch_size

    def scheduler_config(self, mu: float | None = None) -> dict:
        """FlowMatchEulerDiscreteScheduler config with Krea 2's shift; a fixed mu pins it (static shift e^mu)."""
        from weightshop.models.schedule import static_shift_for_mu

        config = {
            "num_train_timesteps": 1000,
            "use_dynamic_shifting": True,
            "time_shift_type": "exponential",
            "base_shift": self.shift.base_mu,
            "max_shift": self.shift.max_mu,
            "base_image_seq_len": self.shift.base_tokens,
            "max_image_seq_len": self.shift.max_tokens,
            "shift": 1.0,
        }
        if mu is not None:
            config.update(use_dynamic_shifting=False, shift=static_shift_for_mu(mu))
        return config


KREA2 = FamilySpec(
    name="krea2",
    checkpoints={"raw": RAW, "turbo": TURBO},
    shift=KREA2_SHIFT,
    text_encoder_select_layers=tuple(range(2, 36, 3)),
    max_sequence_length=512,
    # The usual practice for Krea 2 files (ComfyUI's fp8/int8 releases): only the 28 blocks are quantized. Kept: the
    # input projection (original `first`), the time embedding and the shared modulation (`tmlp`, `tproj`), the text
    # projection (`txtmlp`) and text fusion, and the final layer (`last`), whose errors reach every token or the
    # output directly.
    quant_keep=("img_in", "time_embed.*", "time_mod_proj", "txt_in.*", "text_fusion.*", "final_layer.*"),
)


def classic_cfg_scale(guidance: float) -> float:
    """The classic CFG scale (as in SD/ComfyUI samplers) that equals Krea's guidance g: 1 + g, or 1 when off."""
    return 1.0 + guidance


def validate_size(height: int, width: int, multiple: int, family: FamilySpec = KREA2) -> None:
    """Reject sizes the model cannot make, naming the nearest valid ones."""
    for label, side in (("height", height), ("width", width)):
        if side % multiple:
            lower = max(multiple, side // multiple * multiple)
            raise WeightshopError(
                f"{label} {side} is not a multiple of {multiple} (VAE scale x patch size); "
                f"try {lower} or {lower + multiple}"
            )
        if not (2 * multiple <= side <= family.hard_max_side):
            raise WeightshopError(
                f"{label} {side} is out of range: accepted {2 * multiple}..{family.hard_max_side} pixels"
            )
