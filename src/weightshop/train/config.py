"""A LoRA training run, as one validated YAML file.

Every field has a default, unknown keys are rejected with the key named, any field can be overridden from
the command line (`--set optim.lr=3e-4`), and the resolved config is saved with the run. Presets give
starting points for the common cases ("style", "subject", "low-vram-24gb").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from weightshop.errors import WeightshopError
from weightshop.models.schedule import LOSS_WEIGHTINGS

BASE_DTYPES = ("none", "fp8", "fp8-mm", "int8", "nf4")  # memory.base_dtype: how the frozen blocks are stored


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    raw: str = Field("krea2-nano", description="The Raw checkpoint to train on (dir, file, hub id or built-in name).")
    turbo: str | None = Field("krea2-nano-turbo", description="Turbo checkpoint for validation (None: skip).")
    components: str | None = None
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"


class DataConfig(_Strict):
    manifest: str = Field(..., description="dataset.json from `weightshop data check`.")
    cache: str | None = Field(None, description="Cache dir from `weightshop data cache` (default: beside the manifest).")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)


class LoraConfig(_Strict):
    rank: int = Field(32, ge=1)
    alpha: float | None = Field(None, description="Default: equal to rank (scale 1), so every consumer agrees.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: str | list[str] = "krea-default"
    text_fusion: bool = True
    dora: bool = False


class ScheduleConfig(_Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    timesteps: Literal["uniform", "logit_normal", "shifted"] = "shifted"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weighting: Literal[LOSS_WEIGHTINGS] = Field(
        "none", description="Weight of each sample's loss by its timestep (models.schedule.loss_weights); none: "
                            "Krea 2's plain objective, the timestep sampler alone decides where training goes.")
    min_snr_gamma: float = Field(5.0, gt=0, description="gamma of loss_weighting min_snr.")
    seed: int = 0


class OptimConfig(_Strict):
    name: Literal["adamw", "adamw8bit", "prodigy"] = "adamw"
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["constant", "cosine"] = "constant"
    warmup: int = Field(0, ge=0)
    max_grad_norm: float | None = 1.0
    ema: float | None = Field(None, description="EMA decay of the LoRA weights (e.g. 0.999); None: off.")


class MemoryConfig(_Strict):
    gradient_checkpointing: bool = False
    autocast: Literal["none", "bf16"] = "none"
    base_dtype: Literal[BASE_DTYPES] = Field(
        "none", description="Store the frozen transformer blocks in fp8 (scaled, upcast per layer), fp8-mm (fp8 "
                            "matmuls in forward and backward: Ada/Hopper GPUs), int8 (per-channel, weight-only) or nf4 (bitsandbytes, CUDA); "
                            "the LoRA stays fp32.")
    compile: bool = Field(False, description="Regional torch.compile of the repeated transformer block.")


class ValidationConfig(_Strict):
    every: int = Field(0, ge=0, description="Steps between validations (0: only at the end).")
    prompts: list[str] = Field(default_factory=list, description="No prompts: no validation renders.")
    seeds: list[int] = Field(default_factory=lambda: [0])
    concept: str | None = Field(None, description="krea2-nano: the concept the probe looks for (star, striped).")


class OutputConfig(_Strict):
    dir: str = "runs/lora"
    name: str = "lora"
    save_every: int = Field(100, ge=1)
    keep_last: int = Field(3, ge=1)
    tensorboard: bool = Field(False, description="Also log scalars to <dir>/tensorboard (needs the tensorboard package).")


class TrainConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _alpha_defaults_to_rank(self):
        if self.lora.alpha is None:
            self.lora.alpha = float(self.lora.rank)
        return self

    @model_validator(mode="after")
    def _dora_needs_a_full_precision_base(self):
        # peft's DoRA reads the frozen weight on every forward (its row norms divide the magnitude vector): a base
        # stored in fp8/int8/nf4 would put the quantisation error into every norm, and quantized/bitsandbytes weights
        # are not plain tensors there. So DoRA trains on an unquantised base only.
        if self.lora.dora and self.memory.base_dtype != "none":
            raise ValueError(f"lora.dora needs the base in full precision (peft normalises by the frozen weight's "
                             f"row norms), but memory.base_dtype is {self.memory.base_dtype!r}: set "
                             "memory.base_dtype: none, or lora.dora: false")
        return self


PRESETS: dict[str, dict] = {
    # Authors' advice for Krea 2: rank/alpha 32, lr 3e-4..7e-4 constant, ~1000 steps; caption what you do
    # NOT want learned, so the LoRA takes the rest as the style.
    "style": {"lora": {"rank": 32}, "optim": {"lr": 5e-4, "scheduler": "constant"}, "schedule": {"steps": 1000}},
    # A subject needs its identity in the attention and MLPs more than in the timestep path; lower lr.
    "subject": {"lora": {"rank": 16}, "optim": {"lr": 3e-4, "warmup": 50}, "schedule": {"steps": 1200},
                "data": {"caption_dropout": 0.05}},
    # 12.8 B on 24 GB: the bf16 base alone is 25.6 GB, so the blocks are stored in fp8 (12.8 GB) and computed
    # in bf16; checkpointed activations; batch 1 with accumulation.
    "low-vram-24gb": {"memory": {"gradient_checkpointing": True, "autocast": "bf16", "base_dtype": "fp8"},
                      "model": {"dtype": "bf16"},
                      "schedule": {"batch_size": 1, "grad_accum": 4}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        # copies all the way down: `--set` edits the merged dict, never a preset or the caller's base
        out[key] = (_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict)
                    else copy.deepcopy(value))
    return out


def _set_path(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise WeightshopError(f"--set {dotted}: {part} is not a section")
    node[leaf] = value


def _explain(error: ValidationError, where: str) -> WeightshopError:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return WeightshopError(f"{where}: " + "; ".join(lines))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None,
                base: dict | None = None) -> TrainConfig:
    """Preset, then the YAML file, then `section.key=value` overrides (values parsed as YAML)."""
    data: dict = {}
    if preset:
        if preset not in PRESETS:
            raise WeightshopError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
        data = _merge(data, PRESETS[preset])
    if base:
        data = _merge(data, base)
    where = "config"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise WeightshopError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise WeightshopError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise WeightshopError(f"{path} must hold a mapping of sections (model, data, lora, ...)")
        data = _merge(data, loaded)
    for text in overrides or []:
        if "=" not in text:
            raise WeightshopError(f"--set {text!r}: expected section.key=value, e.g. optim.lr=3e-4")
        key, raw = text.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, where) from None


def with_changes(cfg: TrainConfig, changes: dict) -> TrainConfig:
    """A copy of `cfg` with dotted fields changed ({"memory.base_dtype": "fp8"}), validated like a loaded config."""
    data = config_dict(cfg)
    for key, value in changes.items():
        _set_path(data, key, value)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise _explain(e, "config") from None


def config_dict(config: TrainConfig) -> dict:
    return config.model_dump(mode="json")


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human lines for every field that differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
