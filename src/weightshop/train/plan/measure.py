"""Measuring a real step: the check on the prediction (tests, docs/memory.md), also usable on a GPU."""

from __future__ import annotations

from collections.abc import Callable

from weightshop.models.shape import ModelShape
from weightshop.train.config import TrainConfig
from weightshop.train.plan.predict import predict


def measure_step_peak(step: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated while `step()` runs, above what was allocated when it started.

    CUDA: the caching allocator's own counter (torch.cuda.max_memory_allocated). CPU: torch has no allocator
    statistics, and RSS is blurred by glibc keeping freed pages, so the step runs under torch.profiler with
    profile_memory, which records every allocation and free of c10's CPU allocator with its size; summed in time
    order they give the exact live-bytes curve. Memory that bypasses c10 (oneDNN scratch) is not seen.
    """
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type().name == "CPU"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def tensor_bytes(*holders) -> int:
    """Bytes of the distinct storages held by modules, optimizers (their state) and dicts of tensors."""
    import torch

    seen: dict[int, int] = {}

    def visit(obj) -> None:
        if isinstance(obj, torch.Tensor) and hasattr(type(obj), "__tensor_flatten__"):  # torchao quantized weights
            for name in obj.__tensor_flatten__()[0]:
                visit(getattr(obj, name))
        elif isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, torch.nn.Module):
            for t in (*obj.parameters(), *obj.buffers()):
                visit(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                visit(state)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    for holder in holders:
        visit(holder)
    return sum(seen.values())


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
