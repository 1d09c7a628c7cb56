"""The quantized formats weightshop stores weights in: one registry, read by the CLI, the files, the memory planner.

A format is a numeric type (fp8, int8, a GGUF block type) in a container layout (ComfyUI's comfy_quant, its legacy
fp8_scaled, GGUF). `stored_bytes` is the one place the size of a quantized Linear is computed: training's memory
plan, inference's plan and the export summary all call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from weightshop.errors import WeightshopError


@dataclass(frozen=True)
class Format:
    name: str  # the name users type: weightshop quantize --format NAME
    container: str  # comfy_quant | fp8_scaled | gguf | memory (in-memory only: training's base)
    numeric: str  # fp8 | int8 | q8_0 | q4_0 | q4_k | nf4
    per_channel: bool  # one scale per output channel (else per tensor, or per block for GGUF)
    suffix: str  # file suffix
    about: str

    @property
    def is_file(self) -> bool:
        return self.container != "memory"


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("fp8", "comfy_quant", "fp8", False, ".safetensors",
           "float8 e4m3 with one fp32 scale per tensor, ComfyUI's comfy_quant layout (float8_e4m3fn)"),
    Format("fp8-channel", "comfy_quant", "fp8", True, ".safetensors",
           "float8 e4m3 with one fp32 scale per output channel, comfy_quant layout with per_row scales"),
    Format("fp8-scaled", "fp8_scaled", "fp8", False, ".safetensors",
           "float8 e4m3 with one scale per tensor, ComfyUI's legacy fp8_scaled layout (scaled_fp8 marker)"),
    Format("int8", "comfy_quant", "int8", True, ".safetensors",
           "int8 weight-only with one fp32 scale per output channel, comfy_quant int8_tensorwise per_row"),
    Format("q8_0", "gguf", "q8_0", False, ".gguf", "GGUF Q8_0: blocks of 32 int8 with one fp16 scale (8.5 bits)"),
    Format("q4_0", "gguf", "q4_0", False, ".gguf", "GGUF Q4_0: blocks of 32 4-bit values with one fp16 scale (4.5 bits)"),
    Format("q4_k", "gguf", "q4_k", False, ".gguf",
           "GGUF Q4_K: super-blocks of 256 4-bit values, 6-bit sub-block scales and mins (4.5 bits)"),
    Format("fp8-mm", "memory", "fp8", True, "",
           "float8 per output channel whose matmuls run in float8 (Ada/Hopper; training's base, inference fast path)"),
    Format("int8-mm", "memory", "int8", True, "",
           "int8 per output channel whose matmuls run in int8 with per-token int8 activations (GeForce, CPU)"),
    Format("nf4", "memory", "nf4", False, "", "bitsandbytes 4-bit NormalFloat (QLoRA), CUDA only"),
)}

FILE_FORMATS = tuple(name for name, f in FORMATS.items() if f.is_file)

# Bytes per block and weights per block of the GGUF types (ggml's layouts).
GGUF_BLOCKS = {"q8_0": (34, 32), "q4_0": (18, 32), "q4_k": (144, 256)}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise WeightshopError(f"unknown format {name!r}: expected one of {', '.join(FORMATS)}") from None


def stored_bytes(name: str, params: int, linears: int, out_channels: int) -> int:
    """Bytes that `params` weights in `linears` Linear layers (with `out_channels` rows in all) occupy in format
    `name`, scales included."""
    fmt = get_format(name)
    if fmt.numeric in GGUF_BLOCKS:
        size, count = GGUF_BLOCKS[fmt.numeric]
        return math.ceil(params / count) * size
    if fmt.numeric == "nf4":  # packed 4-bit pairs, one fp32 absmax per 64 weights
        return params // 2 + 4 * math.ceil(params / 64)
    return params + 4 * (out_channels if fmt.per_channel else linears)
