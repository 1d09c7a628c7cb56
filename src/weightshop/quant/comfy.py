"""ComfyUI's quantized safetensors layouts, written and parsed for any state dict (model-agnostic).

comfy_quant (ComfyUI's current layout; its QUANTIZATION.md and comfy/ops.py):
  <layer>.weight        float8_e4m3fn or int8 values q
  <layer>.weight_scale  fp32: a scalar (one scale per tensor) or (out, 1) (one per output row); w ~= q * scale
  <layer>.comfy_quant   uint8 tensor holding the layer's JSON config: {"format": "float8_e4m3fn"} or
                        {"format": "int8_tensorwise"}, with "per_row": true when the scale has one value per row
  header metadata       _quantization_metadata = {"format_version": "1.0", "layers": {<layer>: {"format": ...}}}
legacy fp8_scaled (what ComfyUI wrote before comfy_quant, and still reads):
  scaled_fp8            an empty float8_e4m3fn marker tensor: its presence says "this file is scaled fp8"
  <layer>.weight        float8_e4m3fn
  <layer>.scale_weight  fp32 scalar; w ~= q * scale_weight
Everything else is a plain tensor, kept as given. weightshop adds header fields of its own (`weightshop.kept`: the
Linear layers left in high precision, `weightshop.keep_patterns`: the patterns that chose them, as JSON) so a file
says what was kept without a model at hand.

Parsing detects the layout from the header and keys and returns, per quantized layer, (q, scale, numeric); every
malformation is a WeightshopError naming the file and the key.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightshop.errors import WeightshopError

COMFY_QUANT = "comfy_quant"
FP8_SCALED = "fp8_scaled"
LAYOUTS = (COMFY_QUANT, FP8_SCALED)
QUANT_METADATA = "_quantization_metadata"
FORMAT_VERSION = "1.0"
SCALED_FP8_MARKER = "scaled_fp8"
# ComfyUI's format names (QUANT_ALGOS in comfy/quant_ops.py) that weightshop holds: name -> (numeric, storage dtype)
COMFY_FORMATS = {"float8_e4m3fn": ("fp8", torch.float8_e4m3fn), "int8_tensorwise": ("int8", torch.int8)}
NUMERIC_FORMAT = {numeric: name for name, (numeric, _) in COMFY_FORMATS.items()}
KEPT_KEY, PATTERNS_KEY, FORMAT_KEY = "weightshop.kept", "weightshop.keep_patterns", "weightshop.format"
# Tensors that describe a quantized weight rather than hold parameters (scales, per-layer configs, the marker).
SIDE_SUFFIXES = (".weight_scale", ".scale_weight", ".comfy_quant", ".input_scale", ".scale_input")


def is_side_tensor(key: str) -> bool:
    return key.endswith(SIDE_SUFFIXES) or key == SCALED_FP8_MARKER or key.endswith("." + SCALED_FP8_MARKER)


@dataclass
class QuantLayer:
    """One quantized Linear as a file holds it: w ~= q * scale."""

    q: torch.Tensor  # float8_e4m3fn or int8 (out, in)
    scale: torch.Tensor  # fp32 scalar, or (out, 1)
    numeric: str  # "fp8" | "int8"

    @property
    def per_row(self) -> bool:
        return self.scale.numel() > 1

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.q.to(dtype) * self.scale.to(dtype).reshape(-1, 1) if self.per_row else \
            self.q.to(dtype) * self.scale.to(dtype).reshape(())


@dataclass
class ComfyFile:
    path: Path
    layout: str  # comfy_quant | fp8_scaled
    layers: dict[str, QuantLayer]  # by layer name as the file writes it (no ".weight")
    plain: dict[str, torch.Tensor]  # every other tensor
    metadata: dict[str, str] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    keep_patterns: list[str] = field(default_factory=list)


def comfy_quant_config(numeric: str, per_row: bool) -> dict:
    """The per-layer JSON of the comfy_quant layout for a numeric type and scale granularity."""
    if numeric not in NUMERIC_FORMAT:
        raise WeightshopError(f"comfy_quant holds {', '.join(NUMERIC_FORMAT)} layers, not {numeric!r}")
    conf = {"format": NUMERIC_FORMAT[numeric]}
    if per_row:
        conf["per_row"] = True
    return conf


def _json_bytes(obj) -> torch.Tensor:
    return torch.tensor(list(json.dumps(obj, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def comfy_state_dict(layers: dict[str, QuantLayer], plain: dict[str, torch.Tensor], layout: str, *,
                     kept=(), keep_patterns=(), format_name: str | None = None,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a file in `layout` holding `layers` quantized and `plain` as they are."""
    if layout not in LAYOUTS:
        raise WeightshopError(f"unknown ComfyUI layout {layout!r}: expected {' or '.join(LAYOUTS)}")
    tensors = dict(plain)
    meta = {KEPT_KEY: json.dumps(sorted(kept)), PATTERNS_KEY: json.dumps(list(keep_patterns))}
    if format_name:
        meta[FORMAT_KEY] = format_name
    if layout == FP8_SCALED:
        tensors[SCALED_FP8_MARKER] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    table = {}
    for name, layer in layers.items():
        if f"{name}.weight" in plain:
            raise WeightshopError(f"layer {name} is given both quantized and as a plain weight")
        tensors[f"{name}.weight"] = layer.q
        if layout == FP8_SCALED:
            if layer.numeric != "fp8" or layer.per_row:
                raise WeightshopError(f"the fp8_scaled layout holds fp8 layers with one scale per tensor; layer {name} "
                                      f"is {layer.numeric}{' per row' if layer.per_row else ''} (use comfy_quant)")
            tensors[f"{name}.scale_weight"] = layer.scale.float().reshape(())
            continue
        conf = comfy_quant_config(layer.numeric, layer.per_row)
        tensors[f"{name}.weight_scale"] = layer.scale.float().reshape(-1, 1) if layer.per_row else \
            layer.scale.float().reshape(())
        tensors[f"{name}.comfy_quant"] = _json_bytes(conf)
        table[name] = {"format": conf["format"]}
    if layout == COMFY_QUANT:
        meta[QUANT_METADATA] = json.dumps({"format_version": FORMAT_VERSION, "layers": table}, sort_keys=True)
    return tensors, meta


def write_comfy(path: str | os.PathLike, layers: dict[str, QuantLayer], plain: dict[str, torch.Tensor], layout: str,
                *, kept=(), keep_patterns=(), format_name: str | None = None) -> Path:
    """Write a ComfyUI quantized safetensors file atomically (see the module docstring for the layouts)."""
    from weightshop.io import atomic_save_safetensors

    tensors, meta = comfy_state_dict(layers, plain, layout, kept=kept, keep_patterns=keep_patterns,
                                     format_name=format_name)
    return atomic_save_safetensors(path, tensors, meta)


def detect_layout(keys, metadata: dict | None = None) -> str | None:
    """comfy_quant, fp8_scaled, or None (not a ComfyUI quantized file), from tensor names and header metadata."""
    keys = list(keys)
    if (metadata or {}).get(QUANT_METADATA) or any(k.endswith(".comfy_quant") for k in keys):
        return COMFY_QUANT
    if any(k == SCALED_FP8_MARKER or k.endswith("." + SCALED_FP8_MARKER) for k in keys):
        return FP8_SCALED
    return None


def _header(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            slices = {k: f.get_slice(k) for k in keys}
            return keys, dict(f.metadata() or {}), {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}
    except Exception as e:
        raise WeightshopError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None


def read_layout(path: str | os.PathLike) -> str | None:
    """The ComfyUI layout of a safetensors file from its header alone (None: not quantized)."""
    keys, meta, _ = _header(Path(path))
    return detect_layout(keys, meta)


def _json_list(path: Path, meta: dict, key: str) -> list[str]:
    if key not in meta:
        return []
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError:
        raise WeightshopError(f"{path}: header field {key} is not JSON ({meta[key]!r:.60})") from None
    if not isinstance(value, list):
        raise WeightshopError(f"{path}: header field {key} should be a JSON list, got {type(value).__name__}")
    return [str(v) for v in value]


def _quant_table(path: Path, meta: dict) -> dict[str, dict]:
    if QUANT_METADATA not in meta:
        return {}
    try:
        table = json.loads(meta[QUANT_METADATA])
        layers = table["layers"]
        if not isinstance(layers, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise WeightshopError(f"{path}: header field {QUANT_METADATA} is not the expected JSON "
                              '{"format_version": ..., "layers": {layer: {"format": ...}}}') from None
    return layers


def _layer_config(path: Path, key: str, blob: torch.Tensor) -> dict:
    try:
        conf = json.loads(bytes(blob.to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightshopError(f"{path}: {key} does not hold JSON ({type(e).__name__}: {e}); expected the bytes of "
                              'e.g. {"format": "float8_e4m3fn"}') from None
    if not isinstance(conf, dict) or "format" not in conf:
        raise WeightshopError(f"{path}: {key} has no \"format\" (got {conf!r:.80})")
    if conf["format"] not in COMFY_FORMATS:
        raise WeightshopError(f"{path}: {key} has format {conf['format']!r}, which weightshop does not load; accepted: "
                              f"{', '.join(COMFY_FORMATS)}")
    return conf


def _checked_scale(path: Path, key: str, scale: torch.Tensor | None, rows: int) -> torch.Tensor:
    if scale is None:
        raise WeightshopError(f"{path}: {key} is missing (every quantized weight needs its scale)")
    if scale.numel() not in (1, rows) or not scale.dtype.is_floating_point:
        raise WeightshopError(f"{path}: {key} has shape {tuple(scale.shape)} {scale.dtype}; expected a float scalar "
                              f"or one value per output row ({rows}, 1)")
    return scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.float().reshape(())


def _checked_weight(path: Path, key: str, q: torch.Tensor, numeric: str) -> torch.Tensor:
    storage = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}[numeric]
    if numeric == "fp8" and q.dtype == torch.uint8:  # some writers store float8 bytes as uint8
        q = q.view(torch.float8_e4m3fn)
    if q.dtype != storage or q.dim() != 2:
        raise WeightshopError(f"{path}: {key} is a {q.dim()}-D {q.dtype} tensor; a {numeric} Linear weight must be "
                              f"2-D {storage}")
    return q


def read_comfy(path: str | os.PathLike) -> ComfyFile:
    """Parse a comfy_quant or fp8_scaled file into its quantized layers and plain tensors."""
    from safetensors.torch import load_file

    path = Path(path)
    keys, meta, _ = _header(path)
    layout = detect_layout(keys, meta)
    if layout is None:
        raise WeightshopError(f"{path} is not a ComfyUI quantized file: no {QUANT_METADATA} header, no .comfy_quant "
                              f"tensors, no {SCALED_FP8_MARKER} marker")
    state = load_file(str(path))
    layers: dict[str, QuantLayer] = {}
    if layout == COMFY_QUANT:
        table = _quant_table(path, meta)
        names = {k[: -len(".comfy_quant")] for k in state if k.endswith(".comfy_quant")} | set(table)
        for name in sorted(names):
            key = f"{name}.comfy_quant"
            if key in state:
                conf = _layer_config(path, key, state.pop(key))
            else:  # only the header names it: the header's entry is the config
                conf = table[name]
                if conf.get("format") not in COMFY_FORMATS:
                    raise WeightshopError(f"{path}: {QUANT_METADATA} gives layer {name} format {conf.get('format')!r}; "
                                          f"accepted: {', '.join(COMFY_FORMATS)}")
            numeric = COMFY_FORMATS[conf["format"]][0]
            if f"{name}.weight" not in state:
                raise WeightshopError(f"{path}: {name}.weight is missing (the layer has a comfy_quant config)")
            q = _checked_weight(path, f"{name}.weight", state.pop(f"{name}.weight"), numeric)
            scale = _checked_scale(path, f"{name}.weight_scale", state.pop(f"{name}.weight_scale", None), q.shape[0])
            state.pop(f"{name}.input_scale", None)  # activation scale: weightshop's layers compute in bf16/fp32
            layers[name] = QuantLayer(q, scale, numeric)
    else:
        for key in [k for k in state if k == SCALED_FP8_MARKER or k.endswith("." + SCALED_FP8_MARKER)]:
            state.pop(key)
        for key in sorted(k for k in state if k.endswith(".weight")):
            if state[key].dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
                continue
            name = key[: -len(".weight")]
            if state[key].dtype == torch.float8_e5m2:
                raise WeightshopError(f"{path}: {key} is float8_e5m2; weightshop loads float8_e4m3fn scaled weights")
            q = _checked_weight(path, key, state.pop(key), "fp8")
            scale = _checked_scale(path, f"{name}.scale_weight", state.pop(f"{name}.scale_weight", None), q.shape[0])
            state.pop(f"{name}.scale_input", None)
            layers[name] = QuantLayer(q, scale, "fp8")
    stray = sorted(k for k in state if k.endswith((".weight_scale", ".scale_weight", ".comfy_quant")))
    if stray:
        raise WeightshopError(f"{path}: {stray[0]} has no quantized weight beside it")
    return ComfyFile(path, layout, layers, state, meta, _json_list(path, meta, KEPT_KEY),
                     _json_list(path, meta, PATTERNS_KEY))


def describe_comfy(path: str | os.PathLike) -> dict:
    """A ComfyUI quantized file from its header alone: layout, layers per format, kept layers, and the fp32/bf16
    tensors' dtypes. A comfy_quant file without the header table is described from its key names."""
    path = Path(path)
    keys, meta, tensors = _header(path)
    layout = detect_layout(keys, meta)
    if layout is None:
        return {"container": "safetensors", "layout": None}
    if layout == COMFY_QUANT:
        table = _quant_table(path, meta)
        names = set(table) | {k[: -len(".comfy_quant")] for k in keys if k.endswith(".comfy_quant")}
        formats = Counter(table.get(n, {}).get("format", "unknown (per-layer JSON only)") for n in names)
        rows = {math.prod(tensors[f"{n}.weight_scale"][1]) > 1 for n in names if f"{n}.weight_scale" in tensors}
        per_row = rows.pop() if len(rows) == 1 else (None if not rows else "mixed")
    else:
        names = {k[: -len(".scale_weight")] for k in keys if k.endswith(".scale_weight")}
        formats = Counter({"float8_e4m3fn (scaled)": len(names)})
        per_row = False
    return {
        "container": "safetensors",
        "layout": layout,
        "quantized_layers": len(names),
        "formats": dict(formats),
        "per_row": per_row,
        "kept": _json_list(path, meta, KEPT_KEY),
        "keep_patterns": _json_list(path, meta, PATTERNS_KEY),
        "format": meta.get(FORMAT_KEY),
        "dtypes": dict(Counter(dtype for dtype, _ in tensors.values())),
    }
