"""Transformer weight names: the original Krea 2 checkpoint layout <-> diffusers' Krea2Transformer2DModel.

The official `raw.safetensors` / `turbo.safetensors` (and ComfyUI) call modules `blocks.N.attn.wq`,
`first`, `last.linear`...; diffusers calls them `transformer_blocks.N.attn.to_q`, `img_in`,
`final_layer.linear`. This table is the one place the correspondence lives: full checkpoints use it here,
LoRA files use it in weightshop.lora. diffusers ships only the original -> diffusers direction for full
checkpoints; saving back to the original layout (merge, quantized exports) needs the inverse, so both
directions come from the same table and a test checks them against diffusers' converter.
"""

from __future__ import annotations

import torch

# Top-level renames (original prefix, diffusers prefix); applied to the start of a key, first match wins.
TOP_LEVEL: tuple[tuple[str, str], ...] = (
    ("first.", "img_in."),
    ("tmlp.0.", "time_embed.linear_1."),
    ("tmlp.2.", "time_embed.linear_2."),
    ("tproj.1.", "time_mod_proj."),
    ("txtmlp.0.scale", "txt_in.norm.weight"),
    ("txtmlp.1.", "txt_in.linear_1."),
    ("txtmlp.3.", "txt_in.linear_2."),
    ("txtfusion.", "text_fusion."),
    ("blocks.", "transformer_blocks."),
    ("last.linear.", "final_layer.linear."),
    ("last.norm.scale", "final_layer.norm.weight"),
    ("last.modulation.lin", "final_layer.scale_shift_table"),
)

# Renames inside blocks (also inside the text-fusion blocks); applied everywhere in the key.
WITHIN_BLOCK: tuple[tuple[str, str], ...] = (
    (".attn.wq.", ".attn.to_q."),
    (".attn.wk.", ".attn.to_k."),
    (".attn.wv.", ".attn.to_v."),
    (".attn.wo.", ".attn.to_out.0."),
    (".attn.gate.", ".attn.to_gate."),
    (".attn.qknorm.qnorm.scale", ".attn.norm_q.weight"),
    (".attn.qknorm.knorm.scale", ".attn.norm_k.weight"),
    (".mlp.", ".ff."),
    (".prenorm.scale", ".norm1.weight"),
    (".postnorm.scale", ".norm2.weight"),
    (".mod.lin", ".scale_shift_table"),
)

ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# A key only the Krea 2 transformer has: how a file is recognised (diffusers uses the same marker).
ORIGINAL_MARKER = "txtfusion.projector.weight"
DIFFUSERS_MARKER = "text_fusion.projector.weight"


def strip_original_prefix(key: str) -> str:
    for prefix in ORIGINAL_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def original_to_diffusers_key(key: str) -> str:
    key = strip_original_prefix(key)
    for old, new in TOP_LEVEL:
        if key.startswith(old):
            key = new + key[len(old):]
            break
    for old, new in WITHIN_BLOCK:
        key = key.replace(old, new)
    return key


def diffusers_to_original_key(key: str) -> str:
    # Top level first, the mirror of `original_to_diffusers_key`: otherwise the within-block rename turns
    # final_layer.scale_shift_table into final_layer.mod.lin before last.modulation.lin can match.
    for old, new in TOP_LEVEL:
        if key.startswith(new):
            key = old + key[len(new):]
            break
    for old, new in WITHIN_BLOCK:
        key = key.replace(new, old)
    return key


def _is_block_modulation(diffusers_key: str) -> bool:
    return diffusers_key.startswith("transformer_blocks.") and diffusers_key.endswith(".scale_shift_table")


def original_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a whole original-layout transformer state dict (each block's 6 modulation rows are flat there)."""
    out = {}
    for key, value in state_dict.items():
        new = original_to_diffusers_key(key)
        out[new] = value.reshape(6, -1) if _is_block_modulation(new) else value
    return out


def diffusers_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a diffusers Krea2Transformer2DModel state dict to the official single-file layout."""
    return {
        diffusers_to_original_key(key): value.reshape(-1) if _is_block_modulation(key) else value
        for key, value in state_dict.items()
    }


def is_original_layout(keys) -> bool:
    return any(strip_original_prefix(k) == ORIGINAL_MARKER for k in keys)


def is_diffusers_layout(keys) -> bool:
    return DIFFUSERS_MARKER in set(keys)
