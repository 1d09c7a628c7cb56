"""Which Linear layers a LoRA adapts, by name.

"krea-default" is the 15 module suffixes of diffusers' Krea 2 example trainer (also what Krea's authors
recommend): on the full model 232 Linears, 95.9 M LoRA parameters at rank 32. "attention" is the five
attention projections; "all-linear" every Linear. A list of names or suffixes selects exactly those.
Targets resolve to full module names, so the selection is explicit, recorded, and testable.
"""

from __future__ import annotations

import torch

from weightshop.errors import WeightshopError

TARGET_SETS: dict[str, tuple[str, ...]] = {
    "krea-default": ("img_in", "final_layer.linear", "to_q", "to_k", "to_v", "to_out.0", "to_gate", "ff.up",
                     "ff.down", "text_fusion.projector", "txt_in.linear_1", "txt_in.linear_2",
                     "time_embed.linear_1", "time_embed.linear_2", "time_mod_proj"),
    "attention": ("to_q", "to_k", "to_v", "to_out.0", "to_gate"),
}


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def resolve_targets(transformer: torch.nn.Module, targets: str | list[str], text_fusion: bool = True) -> list[str]:
    """Full names of the Linear layers selected by a target set or an explicit list."""
    linears = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    if not text_fusion:
        linears = [n for n in linears if not n.startswith("text_fusion.")]
    if targets == "all-linear":
        return linears
    if isinstance(targets, str):
        if targets not in TARGET_SETS:
            raise WeightshopError(f"unknown target set {targets!r}: expected {', '.join(TARGET_SETS)}, all-linear, "
                                  "or a list of module names")
        suffixes = TARGET_SETS[targets]
    else:
        suffixes = tuple(targets)
        unmatched = [s for s in suffixes if not any(_matches(n, s) for n in linears)]
        if unmatched:
            raise WeightshopError(f"LoRA targets {unmatched} match no Linear layer of the transformer "
                                  f"(e.g. {', '.join(linears[:4])})")
    chosen = [n for n in linears if any(_matches(n, s) for s in suffixes)]
    if not chosen:
        raise WeightshopError(f"LoRA targets {targets!r} select no Linear layer")
    return chosen


def lora_parameter_count(transformer: torch.nn.Module, names: list[str], rank: int) -> int:
    modules = dict(transformer.named_modules())
    return sum(rank * (modules[n].in_features + modules[n].out_features) for n in names)
