"""Resumable training state for the nano build: one atomic safetensors + JSON pair per stage.

A build of several CPU hours gets interrupted. Each stage saves its model, optimiser, step and RNG
state every few minutes (temp + rename, so a kill leaves the previous state intact) and picks up
exactly where it stopped. Optimiser state is flattened to tensors so nothing is pickled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from weightshop.io import atomic_write_json


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
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


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
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
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
    tmp = path.with_name(path.name + ".tmp.safetensors")
    save_file(tensors, str(tmp))
    os.replace(tmp, path.with_suffix(".safetensors"))
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
        _unflatten_optimizer(optimizer, tensors, meta["optimizer"])
    set_rng_state(meta["rng"])
    return meta["info"]
