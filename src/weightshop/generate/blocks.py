"""Krea 2's transformer block as one function, for weightshop's denoising loop (`generate.fast.velocity`).

`run_block` performs the operations of diffusers' `Krea2TransformerBlock.forward` in the same order on the same
submodules, so its output is bit-identical; what it drops are per-call costs around the math: the module call
machinery of the block, its norms, its attention and its feed-forward, and `Krea2Attention.forward`'s
`inspect.signature` of its processor at every call (about a tenth of a nano step on the CPU). The Linear layers
are still called as modules, so whatever sits there runs: peft's LoRA layers, weightshop's quantized Linears.

It stands in for `block(...)` only where nothing could tell the difference (`plain`): the diffusers classes it was
written against, no hooks on the modules it bypasses (torch's hook lists, and the hooks diffusers and accelerate
install by replacing `forward`: caches, layerwise casting, offloading), the block not compiled (a compiled block
runs its compiled graph), and the attention processor the model was built with. Anything else runs the block as a
module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def hooked(module, ignore: tuple[int, ...] = ()) -> bool:
    """Whether calling the module runs more than its class's forward: torch hooks (but the pre-hooks whose ids are
    in `ignore`), or a hook that replaced `forward` on the instance (diffusers' HookRegistry, accelerate's
    add_hook_to_module), or a compiled call."""
    forward = vars(module).get("forward")  # a removed accelerate hook leaves the class's own forward bound here
    replaced = forward is not None and getattr(forward, "__func__", None) is not type(module).forward
    pre_hooks = set(module._forward_pre_hooks) - set(ignore)
    return bool(module._forward_hooks or pre_hooks or replaced
                or bool(getattr(getattr(module, "_diffusers_hook", None), "hooks", None))
                or hasattr(module, "_hf_hook")
                or getattr(module, "_compiled_call_impl", None) is not None)


def plain(block) -> bool:
    """Whether `run_block` computes exactly what calling the block would."""
    from diffusers.models.transformers.transformer_krea2 import (Krea2Attention, Krea2AttnProcessor, Krea2RMSNorm,
                                                                 Krea2SwiGLU, Krea2TransformerBlock)

    if type(block) is not Krea2TransformerBlock:
        return False
    expected = ((block.norm1, Krea2RMSNorm), (block.norm2, Krea2RMSNorm), (block.attn, Krea2Attention),
                (block.ff, Krea2SwiGLU))
    if any(type(m) is not cls for m, cls in expected):
        return False
    if any(hooked(m) for m in (block, block.norm1, block.norm2, block.attn, block.ff)):
        return False
    return type(block.attn.processor) is Krea2AttnProcessor


@dataclass(frozen=True)
class PreparedBlock:
    """A block with its norm weights' `+ 1` done once per generation (Krea2RMSNorm adds it at every call)."""

    block: torch.nn.Module
    norm1: torch.Tensor
    norm2: torch.Tensor


def prepare(blocks) -> list[PreparedBlock | torch.nn.Module]:
    """Each block as `run_block` takes it where it is `plain`, else the module itself."""
    return [PreparedBlock(b, b.norm1.weight + 1.0, b.norm2.weight + 1.0) if plain(b) else b for b in blocks]


def _norm(x: torch.Tensor, norm, weight: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x.float(), (norm.dim,), weight=weight, eps=norm.eps).to(x.dtype)


def run_block(prepared: PreparedBlock | torch.nn.Module, hidden: torch.Tensor, temb: torch.Tensor, rope,
              mask: torch.Tensor | None) -> torch.Tensor:
    """One transformer block on (text + image) tokens: Krea2TransformerBlock.forward's operations, in its order."""
    if not isinstance(prepared, PreparedBlock):
        return prepared(hidden, temb, rope, mask)
    block = prepared.block
    prescale, preshift, pregate, postscale, postshift, postgate = (
        temb.unflatten(-1, (6, -1)) + block.scale_shift_table).unbind(-2)
    attn = block.attn
    x = (1.0 + prescale) * _norm(hidden, block.norm1, prepared.norm1) + preshift
    hidden = hidden + pregate * attn.processor(attn, x, mask, rope)
    x = (1.0 + postscale) * _norm(hidden, block.norm2, prepared.norm2) + postshift
    ff = block.ff
    return hidden + postgate * ff.down(F.silu(ff.gate(x)) * ff.up(x))
