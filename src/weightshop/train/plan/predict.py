"""The prediction: what lives on the device at the worst moment of a step, whether it fits, and what to change."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from weightshop.errors import WeightshopError
from weightshop.models.flops import TERA, training_step_flops
from weightshop.models.memory import CUDA_OVERHEAD, FRAGMENTATION, GPUS_MIB, OVERHEAD_PARTS, GiB, parse_gpu
from weightshop.models.shape import ModelShape
from weightshop.train.config import BASE_DTYPES, TrainConfig, with_changes
from weightshop.train.plan.activations import activation_bytes, activation_dtypes
from weightshop.models.flops import card_peaks, lower_bound_s
from weightshop.train.plan.params import (OPTIMIZER_BYTES, ParamCounts, base_weight_bytes, count_parameters,
                                          dequantized_weight_bytes, dora_norm_bytes)

__all__ = ["CUDA_OVERHEAD", "FRAGMENTATION", "GPUS_MIB", "OVERHEAD_PARTS", "GiB", "MemoryPlan", "Suggestion",
           "memory_settings", "parse_gpu", "plan", "predict", "suggest"]  # the device facts re-exported from models


def memory_settings(cfg: TrainConfig) -> dict:
    """The fields of a run config that decide its memory, as the plan reports them."""
    return {"model_dtype": cfg.model.dtype, "autocast": cfg.memory.autocast, "base_dtype": cfg.memory.base_dtype,
            "checkpointing": cfg.memory.gradient_checkpointing, "compile": cfg.memory.compile, "rank": cfg.lora.rank,
            "targets": cfg.lora.targets, "text_fusion": cfg.lora.text_fusion, "lora_dropout": cfg.lora.dropout,
            "dora": cfg.lora.dora, "batch_size": cfg.schedule.batch_size, "grad_accum": cfg.schedule.grad_accum,
            "optimizer": cfg.optim.name, "ema": cfg.optim.ema is not None}


@dataclass
class Suggestion:
    change: str
    sets: list[str]  # the `--set` overrides that make the change, with every row above it
    resolution: tuple[int, int]
    total: int
    fits: bool


@dataclass
class MemoryPlan:
    model: str
    height: int
    width: int
    settings: dict  # memory_settings(config)
    image_tokens: int
    text_tokens: int
    parts: dict[str, int]  # what lives on the device at the peak, in bytes
    activation_terms: dict[str, int]
    base_parameters: int
    lora_parameters: int
    lora_modules: int
    gpu_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    # The compute of one step (a forward and backward over batch_size samples; an optimizer step is grad_accum of
    # them): models.flops.training_step_flops, the count `weightshop bench train` reports its MFU against.
    step_flops: float = 0.0
    peak_tflops: dict[str, float] | None = None  # the --gpu card's dense peak by precision (None: no known card)
    # step_flops / peak: no step runs faster (a FLOP-limited lower bound, not a prediction), by precision
    flop_lower_bound_s_per_step: dict[str, float] | None = None

    @property
    def allocated(self) -> int:
        """Peak bytes of tensors (what torch.cuda.max_memory_allocated reports)."""
        return sum(v for k, v in self.parts.items() if k not in OVERHEAD_PARTS)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_bytes is None else self.total <= self.gpu_bytes

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "suggestions"}
        out.update(allocated=self.allocated, total=self.total, fits=self.fits,
                   total_gib=round(self.total / GiB, 2), gpu_gib=None if self.gpu_bytes is None else
                   round(self.gpu_bytes / GiB, 2), suggestions=[asdict(s) for s in self.suggestions],
                   tflop_per_step=self.step_flops / TERA)
        return out


def predict(cfg: TrainConfig, shape: ModelShape, height: int, width: int | None = None,
            gpu_bytes: int | None = None, counts: ParamCounts | None = None) -> MemoryPlan:
    """Peak training memory of one step of the run `cfg` on `shape` at height x width. Pure given the parameter
    counts (counted on the meta device with the trainer's own LoRA setup when not passed)."""
    from weightshop.models.spec import validate_size

    width = width or height
    validate_size(height, width, shape.size_multiple)
    m, lora_cfg = cfg.memory, cfg.lora
    if m.base_dtype not in BASE_DTYPES:
        raise WeightshopError(f"unknown memory.base_dtype {m.base_dtype!r}: expected {', '.join(BASE_DTYPES)}")
    counts = counts or count_parameters(shape, cfg)
    dt = activation_dtypes(cfg.model.dtype, m.autocast, m.base_dtype)
    tokens = shape.image_tokens(height, width)
    acts = activation_bytes(shape, counts, batch=cfg.schedule.batch_size, image_tokens=tokens, dt=dt,
                            checkpointing=m.gradient_checkpointing, rank=lora_cfg.rank,
                            lora_dropout=lora_cfg.dropout > 0, dora=lora_cfg.dora)
    lora = counts.lora
    parts = {
        "base weights": base_weight_bytes(counts, cfg.model.dtype, m.base_dtype),
        "dequantized weights": dequantized_weight_bytes(counts, m.base_dtype, m.gradient_checkpointing, dt),
        "LoRA weights (fp32)": 4 * lora,
        "LoRA grads (fp32)": 4 * lora,
        "optimizer state": int(OPTIMIZER_BYTES[cfg.optim.name] * lora),
        "EMA copy": 4 * lora if cfg.optim.ema is not None else 0,
        "DoRA weight norm (one module)": dora_norm_bytes(counts, dt) if lora_cfg.dora else 0,
        "activations": sum(acts.values()),
    }
    allocated = sum(parts.values())
    parts[OVERHEAD_PARTS[0]] = CUDA_OVERHEAD
    parts[OVERHEAD_PARTS[1]] = int(FRAGMENTATION * allocated)
    notes = []
    if m.compile:
        notes.append("torch.compile is not modelled; peers report it raising the peak "
                     "(64 GiB vs 33 GiB, H100, 1024 px)")
    if m.base_dtype != "none":
        notes.append(f"base {m.base_dtype}: the blocks' Linear weights are stored quantized; embeddings, "
                     "text fusion and the final layer stay in the model dtype")
    if m.base_dtype in ("fp8", "int8") and not m.gradient_checkpointing:
        notes.append(f"without gradient checkpointing a {m.base_dtype} base saves nothing at the peak: every "
                     "block's upcast weights are kept for backward")
    flops = training_step_flops(shape.config, tokens, shape.max_sequence_length, cfg.schedule.batch_size,
                                m.gradient_checkpointing)
    return MemoryPlan(shape.name, height, width, memory_settings(cfg), tokens, shape.max_sequence_length, parts,
                      acts, counts.total, lora, len(counts.lora_modules), gpu_bytes, notes, step_flops=flops)


def _set_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def suggest(cfg: TrainConfig, plan: MemoryPlan, shape: ModelShape, gpu_bytes: int) -> list[Suggestion]:
    """Changes in order of what they cost the result (nothing first), each on top of the ones before and each
    re-predicted, until one fits. An "or ..." row is an alternative to the row above it, not a further step.
    A DoRA run gets no quantized-base rows: DoRA normalises by the frozen weight, so it trains on a full base."""
    size = (plan.height, plan.width)
    steps: list[tuple[str, dict, tuple[int, int], bool]] = []
    changes: dict = {}

    def step(change: str, **sets) -> None:
        changes.update(sets)
        steps.append((change, dict(changes), size, False))

    def value(key: str):
        return changes.get(key, _config_value(cfg, key))

    if value("model.dtype") == "fp32":
        step("bf16 base weights (LoRA stays fp32)", **{"model.dtype": "bf16"})
    if not value("memory.gradient_checkpointing"):
        step("gradient checkpointing (~30 % slower, same result)", **{"memory.gradient_checkpointing": True})
    batch, accum = value("schedule.batch_size"), value("schedule.grad_accum")
    if batch > 1:
        step(f"batch 1 x {accum * batch} accumulation steps (same effective batch)",
             **{"schedule.batch_size": 1, "schedule.grad_accum": accum * batch})
    if not cfg.lora.dora:
        if value("memory.base_dtype") == "none":
            step("base fp8 (scaled, upcast per layer)", **{"memory.base_dtype": "fp8"})
            steps.append(("or base int8 (per-channel), instead of fp8", {**changes, "memory.base_dtype": "int8"}, size, True))
        if value("memory.base_dtype") != "nf4":
            step("base nf4 (bitsandbytes, CUDA)", **{"memory.base_dtype": "nf4"})
    if value("lora.text_fusion"):
        step("no LoRA in the text fusion (its activations are never checkpointed)", **{"lora.text_fusion": False})
    multiple = shape.size_multiple
    for side in (768, 512):
        if max(size) > side:
            size = tuple(max(multiple, x * side // max(size) // multiple * multiple) for x in size)
            step(f"train at {size[0]}x{size[1]}")
    while value("lora.rank") > 8:
        step(f"LoRA rank {value('lora.rank') // 2}", **{"lora.rank": value("lora.rank") // 2})
    out: list[Suggestion] = []
    for change, sets, at, alternative in steps:
        if not alternative and any(t.fits for t in out):
            break
        total = predict(with_changes(cfg, sets), shape, *at, gpu_bytes).total
        out.append(Suggestion(change, [f"{k}={_set_text(v)}" for k, v in sets.items()], at, total, total <= gpu_bytes))
    return out


def _config_value(cfg: TrainConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def plan(cfg: TrainConfig, shape: ModelShape, height: int, width: int | None = None,
         gpu_bytes: int | None = None, gpu: str | None = None) -> MemoryPlan:
    """`predict`, plus the suggestions when it does not fit, and when `gpu` (--gpu's text) names a card whose
    peak is known, the FLOP-limited lower bound of a step: bf16, and fp8 too for an fp8-matmul base (fp8-mm)."""
    result = predict(cfg, shape, height, width, gpu_bytes)
    result.peak_tflops = card_peaks(gpu, fp8=cfg.memory.base_dtype == "fp8-mm")
    result.flop_lower_bound_s_per_step = lower_bound_s(result.step_flops, result.peak_tflops)
    if gpu_bytes is not None and not result.fits:
        result.suggestions = suggest(cfg, result, shape, gpu_bytes)
    return result
