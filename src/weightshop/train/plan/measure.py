"""Measuring a real step: the check on the prediction (tests, docs/memory.md), also usable on a GPU.

The peak measurement itself (`measure_step_peak`, `tensor_bytes`) lives in `weightshop.models.memory`, shared with
inference's plan.
"""

from __future__ import annotations

from weightshop.models.memory import measure_peak as measure_step_peak
from weightshop.models.memory import tensor_bytes
from weightshop.models.shape import ModelShape
from weightshop.train.config import TrainConfig
from weightshop.train.plan.predict import predict


def measure_training_step(shape: ModelShape, cfg: TrainConfig, height: int, width: int | None = None,
                          device: str = "cpu") -> dict:
    """Build `shape` with random weights, set the run `cfg` up as the trainer does, take the trainer's own step
    (micro-batches, backward, clipping, optimizer, EMA), and measure a steady-state step (after one warm-up step): `static` is what lives
    between steps (weights, LoRA, optimizer state, EMA), `step_peak` the most the step adds on top.

    Reusable on a GPU (device="cuda"); tests run it on CPU."""
    from weightshop.train.synthetic import trainer_step

    step = trainer_step(cfg, shape.config, height, width, device=device, vae_scale=shape.vae_scale_factor,
                        text_tokens=shape.max_sequence_length)
    step()  # warm-up: the optimizer allocates its state
    step.optimizer.zero_grad(set_to_none=True)
    static = tensor_bytes(step.model, step.optimizer, step.ema or {})
    peak = measure_step_peak(step, device)
    return {"static": static, "step_peak": peak, "total": static + peak, "modules": len(step.names)}


def calibrate(shape: ModelShape, cases: list[tuple[int, TrainConfig]], device: str = "cpu") -> list[dict]:
    """Measured against predicted, per (resolution, run config): the rows of docs/memory.md's calibration table."""
    from weightshop.train.plan.predict import memory_settings

    rows = []
    for size, cfg in cases:
        measured = measure_training_step(shape, cfg, size, device=device)
        predicted = predict(cfg, shape, size)
        static = sum(predicted.parts[k] for k in ("base weights", "LoRA weights (fp32)", "optimizer state", "EMA copy"))
        rows.append({"resolution": size, "settings": memory_settings(cfg), "measured_static": measured["static"],
                     "predicted_static": static, "measured_step": measured["step_peak"],
                     "predicted_step": predicted.allocated - static, "measured_total": measured["total"],
                     "predicted_total": predicted.allocated})
    return rows
