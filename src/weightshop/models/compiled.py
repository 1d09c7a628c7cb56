"""Regional compilation of the Krea 2 transformer, shared by training's step and generation's fast path."""

from __future__ import annotations


def compile_blocks(transformer, dynamic: bool | None = False, mode: str | None = None) -> int:
    """Regional compilation: compile the repeated transformer block once instead of the whole graph (28 identical
    blocks share one compiled graph: seconds of compile instead of minutes, the same speed).

    Training's shapes are fixed (dynamic=False). Generation with trimmed text sees one sequence length per prompt
    length: dynamic=None lets torch mark the length dynamic after its first recompile instead of compiling per
    prompt. mode "reduce-overhead" adds CUDA graphs (static shapes: one graph per text length; CUDA only).
    Returns the number of blocks compiled."""
    transformer.compile_repeated_blocks(dynamic=dynamic, **({"mode": mode} if mode else {}))
    return len(transformer.transformer_blocks)
