"""GGUF files of a state dict: Q8_0, Q4_0 and Q4_K Linear weights, the rest in F32 / F16 / BF16.

Named gguf_file, not gguf, so that `import gguf` (the package that writes and reads the container) is never shadowed.
Model-agnostic: the caller names the tensors and says which weights to quantize to which type; nothing here knows a
module of Krea 2.

What the readers expect, and what this writer therefore does:
- ComfyUI-GGUF and diffusers' GGUF loader both read `general.architecture` and the tensors by name; F32 and F16
  tensors load as plain tensors, every other type as blocks dequantized on the fly (diffusers: `GGUFParameter` in a
  `GGUFLinear`). So tensors that are not Linear weights (norms, biases, modulation tables) must be F32 or F16 here:
  a BF16 norm would reach diffusers as a block tensor. The caller converts those to fp32 first; kept Linear weights
  may stay BF16 (dequantized exactly).
- ggml lists a tensor's dimensions innermost first (`ne[0]` = the row length), the reverse of torch's order. The
  gguf package reverses them on write and the reader's `shape` is in ggml order; the logical torch shape is
  `reversed(reader shape)`. A quantized tensor's data is (rows, bytes per row): blocks run along the last torch
  dimension (a Linear's input features), which must be a multiple of the block size.
- Q8_0 and Q4_0 are quantized by the gguf package (llama.cpp's reference code); Q4_K by `numerics.q4_k_quantize`
  (gguf-py only dequantizes K-quants).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightshop.errors import WeightshopError
from weightshop.quant.numerics import q4_k_dequantize, q4_k_quantize

# weightshop's numeric name -> ggml type name; the block size (weights per block) and bytes per block come from gguf.
GGUF_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K"}
PLAIN_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
# general.file_type, as llama.cpp's tools write it (LlamaFileType: the type most weights have).
FILE_TYPES = {"q8_0": 7, "q4_0": 2, "q4_k": 15}
META_PREFIX = "weightshop."  # this writer's own key-value fields: weightshop.<key> = a JSON string


@dataclass
class GGUFTensor:
    """One tensor of a GGUF file as stored: `data` is the raw block bytes uint8 (rows..., bytes per row) for a
    quantized type, or the plain tensor for F32 / F16 / BF16, shaped like `shape`."""

    name: str
    type: str  # ggml type name: Q8_0, Q4_K, F32, BF16, ...
    shape: tuple[int, ...]  # logical torch shape (ggml's dimensions reversed)
    data: torch.Tensor

    @property
    def quantized(self) -> bool:
        return self.type not in PLAIN_TYPES.values()


@dataclass
class GGUFFile:
    path: Path
    architecture: str | None
    tensors: dict[str, GGUFTensor]
    metadata: dict[str, object] = field(default_factory=dict)  # weightshop.* fields, JSON-decoded


def _qtype(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name]


def block_size(numeric: str) -> int:
    """Weights per block of a GGUF numeric (32 for Q8_0 / Q4_0, 256 for Q4_K)."""
    import gguf

    return gguf.GGML_QUANT_SIZES[_qtype(GGUF_TYPES[numeric])][0]


def fits_blocks(shape: tuple[int, ...], numeric: str) -> bool:
    """Whether a weight of this torch shape can be stored as `numeric` blocks (rows a multiple of the block)."""
    return len(shape) >= 2 and shape[-1] % block_size(numeric) == 0


def quantize(w: torch.Tensor, numeric: str) -> torch.Tensor:
    """`w` (out, in) as GGUF blocks: uint8 (out, in / block * bytes per block)."""
    import gguf

    if numeric not in GGUF_TYPES:
        raise WeightshopError(f"unknown GGUF type {numeric!r}: expected one of {', '.join(GGUF_TYPES)}")
    if not fits_blocks(tuple(w.shape), numeric):
        raise WeightshopError(f"a {tuple(w.shape)} weight cannot be stored as {GGUF_TYPES[numeric]}: its rows must "
                              f"be a multiple of {block_size(numeric)} weights")
    w = w.detach().float().cpu()
    if numeric == "q4_k":
        return q4_k_quantize(w.reshape(-1, w.shape[-1])).reshape(*w.shape[:-1], -1)
    import numpy as np

    # all-zero or subnormal blocks overflow gguf-py's 1 / d (they dequantize to 0, within the bound): not news
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return torch.from_numpy(gguf.quants.quantize(w.numpy(), _qtype(GGUF_TYPES[numeric])))


def dequantize(t: GGUFTensor) -> torch.Tensor:
    """A stored tensor as fp32 values of its logical shape (exact: no rounding beyond the format's own)."""
    import gguf

    if not t.quantized:
        return t.data.float()
    raw = t.data.reshape(-1, t.data.shape[-1])
    if t.type == "Q4_K":
        out = q4_k_dequantize(raw)
    elif t.type == "BF16":
        return t.data.float()
    else:
        out = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), _qtype(t.type)))
    return out.reshape(t.shape)


def write_gguf(path: str | os.PathLike, quantized: dict[str, tuple[torch.Tensor, str]],
               plain: dict[str, torch.Tensor], *, architecture: str, file_type: str | None = None,
               metadata: dict[str, object] | None = None) -> Path:
    """Write a GGUF file atomically: `quantized` maps a name to (blocks from `quantize`, numeric), `plain` a name to
    an fp32 / fp16 / bf16 tensor stored as is; `metadata` becomes weightshop.<key> string fields holding JSON.
    Tensors are written in sorted name order."""
    import gguf

    from weightshop.io import atomic_path

    clash = set(quantized) & set(plain)
    if clash:
        raise WeightshopError(f"tensor {sorted(clash)[0]!r} given both quantized and plain")
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), architecture)
        try:
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            if file_type in FILE_TYPES:
                writer.add_file_type(FILE_TYPES[file_type])
            for key, value in sorted((metadata or {}).items()):
                writer.add_string(META_PREFIX + key, json.dumps(value, sort_keys=True))
            for name in sorted({*quantized, *plain}):
                if name in quantized:
                    blocks, numeric = quantized[name]
                    writer.add_tensor(name, blocks.cpu().contiguous().numpy(), raw_dtype=_qtype(GGUF_TYPES[numeric]))
                    continue
                t = plain[name].detach().cpu().contiguous()
                if t.dtype not in PLAIN_TYPES:
                    raise WeightshopError(f"tensor {name!r} is {t.dtype}: GGUF plain tensors must be float32, "
                                          "float16 or bfloat16")
                if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hand over the bytes (2 per value, rows last)
                    writer.add_tensor(name, t.reshape(t.shape or (1,)).view(torch.uint8).numpy(),
                                      raw_dtype=gguf.GGMLQuantizationType.BF16)
                else:
                    writer.add_tensor(name, t.numpy())
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def _field_value(reader_field):
    try:
        return reader_field.contents()
    except Exception:  # an array of strings or a type the installed gguf cannot decode: not ours to read
        return None


def _open(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise WeightshopError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it may be truncated "
                              "or in another format") from None


def _metadata(reader, path: Path) -> dict[str, object]:
    out = {}
    for key, f in reader.fields.items():
        if key.startswith(META_PREFIX):
            text = _field_value(f)
            try:
                out[key[len(META_PREFIX):]] = json.loads(text)
            except (TypeError, json.JSONDecodeError):
                raise WeightshopError(f"{path}: field {key} is not JSON ({text!r:.60})") from None
    return out


def gguf_header(path: str | os.PathLike) -> dict:
    """Architecture, weightshop fields and per-tensor (type, logical shape) of a GGUF file, without reading weights
    (the reader memory-maps the file; only the header is touched)."""
    path = Path(path)
    reader = _open(path)
    arch = reader.get_field("general.architecture")
    return {
        "architecture": _field_value(arch) if arch is not None else None,
        "metadata": _metadata(reader, path),
        "tensors": {t.name: (t.tensor_type.name, tuple(int(v) for v in reversed(t.shape.tolist())))
                    for t in reader.tensors},
    }


def gguf_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> logical torch shape, from the header (the GGUF counterpart of io.safetensors_shapes)."""
    return {name: shape for name, (_, shape) in gguf_header(path)["tensors"].items()}


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Every tensor of a GGUF file as stored (quantized blocks raw, plain tensors as torch tensors). Files from other
    tools may hold any block type diffusers' GGUFLinear dequantizes (Q5_K, Q6_K, ...); others are refused."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    readable = {t.name for t in SUPPORTED_GGUF_QUANT_TYPES}  # what GGUFLinear dequantizes on the fly
    path = Path(path)
    reader = _open(path)
    tensors = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        shape = tuple(int(v) for v in reversed(t.shape.tolist()))
        data = torch.from_numpy(t.data.copy())
        if kind == "BF16":
            data = data.view(torch.uint8).view(torch.bfloat16).reshape(shape)
        elif kind in ("F32", "F16"):
            data = data.reshape(shape)
        elif kind not in readable:
            raise WeightshopError(f"{path}: tensor {t.name} is {kind}, which weightshop cannot dequantize (accepted: "
                                  f"F32, F16, {', '.join(sorted(readable))})")
        tensors[t.name] = GGUFTensor(t.name, kind, shape, data)
    arch = reader.get_field("general.architecture")
    return GGUFFile(path, _field_value(arch) if arch is not None else None, tensors, _metadata(reader, path))
