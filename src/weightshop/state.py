"""Resumable training state (nano build stages, LoRA training): one atomic safetensors + JSON pair.

A build of several CPU hours gets interrupted. Each stage saves its model, optimiser, step and RNG
state every few minutes (temp + rename, so a kill leaves the previous state intact) and picks up
exactly where it stopped. Optimiser state is flattened to tensors so nothing is pickled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from weightshop.io import atomic_save_safetensors, atomic_write_json


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in pstate.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.contiguous()
                meta["state"][str(pid)][k] = "tensor"
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = {}
    for pid, pstate in meta["state"].items():
        state[int(pid)] = {k: tensors[f"opt.{pid}.{k}"] if v == "tensor" else v for k, v in pstate.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": random.getstate()[1],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))


def save_state(path: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
               info: dict) -> None:
    """Write <path>.safetensors (weights + optimiser tensors) and <path>.json (step, RNG, anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{k}": v.detach().contiguous() for name, m in modules.items()
               for k, v in m.state_dict().items()}
    meta = {"info": info, "rng": rng_state()}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
    atomic_save_safetensors(path.with_suffix(".safetensors"), tensors)
    atomic_write_json(path.with_suffix(".json"), meta)


def load_state(path: str | Path, modules: dict[str, torch.nn.Module],
               optimizer: torch.optim.Optimizer | None) -> dict | None:
    """Restore what save_state wrote; returns its info dict, or None when there is nothing to resume."""
    path = Path(path)
    weights, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (weights.is_file() and meta_path.is_file()):
        return None
    tensors = load_file(str(weights))
    meta = json.loads(meta_path.read_text())
    for name, m in modules.items():
        prefix = f"{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if optimizer is not None and "optimizer" in meta:
        unflatten_optimizer(optimizer, tensors, meta["optimizer"])
    set_rng_state(meta["rng"])
    return meta["info"]


def warmup_cosine(step: int, total: int, warmup: int, decay_from: float = 0.0) -> float:
    """LR multiplier: linear warmup, then flat until decay_from * total, then cosine to zero at total."""
    import math

    scale = min(1.0, (step + 1) / max(1, warmup))
    start = int(decay_from * total)
    if step > start:
        scale *= 0.5 * (1 + math.cos(math.pi * (step - start) / max(1, total - start)))
    return scale


def run_loop(label: str, state_path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
             total: int, base_lr: float, lr_scale, step_loss, *, max_steps: int | None = None,
             deadline: float | None = None, progress=None, after_step=None, clip: float | None = 1.0,
             save_every_s: float = 120.0) -> dict:
    """The resumable training loop every nano stage shares.

    step_loss(step) -> (loss, metrics) computes one step's loss from randomness derived from step alone;
    lr_scale(step) -> multiplier; after_step(step) runs after the optimiser (EMA updates). State is saved
    every save_every_s, at the target step and at the deadline. Returns the info dict (step, history).
    """
    import time

    info = load_state(state_path, modules, optimizer) or {"step": 0, "history": []}
    target = min(total, max_steps) if max_steps else total
    params = [p for group in optimizer.param_groups for p in group["params"]]
    last_save, smooth = time.monotonic(), None
    while info["step"] < target:
        step = info["step"]
        for group in optimizer.param_groups:
            group["lr"] = base_lr * lr_scale(step)
        loss, metrics = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if after_step:
            after_step(step)
        info["step"] = step + 1
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if info["step"] % 50 == 0:
            info["history"].append({"step": info["step"], "loss": smooth, "time": time.time(), **metrics})
        if progress:
            progress(label, info["step"], target, {"loss": smooth, **metrics})
        stop = deadline is not None and time.time() > deadline
        if time.monotonic() - last_save > save_every_s or info["step"] == target or stop:
            save_state(state_path, modules, optimizer, info)
            last_save = time.monotonic()
        if stop:
            break
    return info
