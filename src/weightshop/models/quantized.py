"""Krea 2 transformers in quantized files: export to every file format, load them back quantized, describe them.

The generic parts live in `weightshop.quant` (numerics, Linear types, the ComfyUI and GGUF containers); this module
adds what only Krea 2 knows: which Linears are sensitive (`FamilySpec.quant_keep`), the original key names ComfyUI
reads (`models.keys`), and the model class the files load into.

Export: every `torch.nn.Linear` of the transformer whose diffusers module name matches none of the keep patterns
(fnmatch globs; by default the family's, so only the transformer blocks) is quantized; everything else is written
as it is. Files carry the ORIGINAL Krea 2 key names (`blocks.N.attn.wq`, `first`, `last.linear`), as ComfyUI and
city96's GGUF conversions of Krea 2 do. A GGUF block type needs rows that are a multiple of its block (256 for
Q4_K): a Linear whose input width is not stays in high precision and is listed as kept.

Loading: comfy_quant and fp8_scaled layers become `Float8Linear` / `Int8Linear` holding the file's q and scale
(bit for bit, no requantization); GGUF layers become diffusers' `GGUFLinear` holding the file's blocks as a
`GGUFParameter`, dequantized on the fly in each forward. All are `torch.nn.Linear` subclasses, so a LoRA applies
on top (peft casts its weights to the layer's `compute_dtype`).
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from weightshop.errors import WeightshopError
from weightshop.models.keys import (
    diffusers_to_original,
    diffusers_to_original_key,
    is_diffusers_layout,
    is_original_layout,
    original_to_diffusers,
    original_to_diffusers_key,
)
from weightshop.models.spec import KREA2, FamilySpec
from weightshop.quant import comfy, gguf_file
from weightshop.quant.formats import Format, get_format
from weightshop.quant.numerics import fp8_quantize, int8_quantize, relative_error

ARCHITECTURE = "krea2"  # general.architecture of weightshop's GGUF files

Progress = Callable[[int, int, str], None]  # (layers done, layers to do, the layer just done)


@dataclass
class ExportResult:
    """What `export_transformer` wrote. Layer names are the transformer's diffusers module names."""

    path: Path
    format: str
    file_bytes: int
    source_bytes: int  # the transformer in bf16: what the file replaces
    quantized: list[str]
    kept: list[str]  # Linears left in high precision (by a keep pattern, or not fitting the format's blocks)
    errors: dict[str, float]  # per quantized layer: ||w - dequantized|| / ||w||
    keep_patterns: tuple[str, ...]
    unfit: list[str] = field(default_factory=list)  # the kept Linears whose shape the format's blocks cannot hold

    @property
    def ratio(self) -> float:
        return self.file_bytes / self.source_bytes if self.source_bytes else float("nan")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        out["keep_patterns"] = list(self.keep_patterns)
        return out


# ---------------------------------------------------------------------------------------------------
# Which layers


def file_container(path: str | Path) -> str | None:
    """gguf, comfy_quant or fp8_scaled for a quantized transformer file; None for any other file."""
    path = Path(path)
    if path.suffix == ".gguf":
        return "gguf"
    if path.suffix == ".safetensors" and path.is_file():
        return comfy.read_layout(path)
    return None


def is_quantized_file(path: str | Path) -> bool:
    return file_container(path) is not None


def matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_layers(model: torch.nn.Module, fmt: Format, keep) -> tuple[list[str], list[str], list[str]]:
    """(to quantize, kept, unfit) Linear module names: kept match a keep pattern or (unfit) cannot hold the format's
    blocks; unfit is a subset of kept."""
    quantize, kept, unfit = [], [], []
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or "lora_" in name:
            continue
        if matches(name, keep):
            kept.append(name)
        elif fmt.container == "gguf" and not gguf_file.fits_blocks(tuple(module.weight.shape), fmt.numeric):
            kept.append(name)
            unfit.append(name)
        else:
            quantize.append(name)
    return quantize, kept, unfit


def _original_layer(name: str) -> str:
    return diffusers_to_original_key(f"{name}.weight").removesuffix(".weight")


# ---------------------------------------------------------------------------------------------------
# Export


def _stored_dtype(files) -> torch.dtype:
    """The dtype a transformer's files hold (bf16 for Krea 2's releases): weights are loaded as stored, so the
    quantization starts from the exact values."""
    from safetensors import safe_open

    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                dtype = handle.get_slice(key).get_dtype()
                if dtype in names:
                    return names[dtype]
    return torch.float32


def _load_for_export(model, components, family: FamilySpec):
    from weightshop.models.loading import load_single_file_transformer, load_transformer, resolve_source
    from weightshop.models.shape import weight_files

    if isinstance(model, torch.nn.Module):
        return model
    path = Path(model).expanduser()
    if path.is_file():
        if is_quantized_file(path):
            raise WeightshopError(f"{path} is already quantized ({file_container(path)}): export from the bf16 "
                                  "transformer (a diffusers directory, its single file, or a built-in name)")
        config = Path(components) / "transformer" if components is not None else None
        config = config if config is not None and config.is_dir() else None
        return load_single_file_transformer(path, config, _stored_dtype([path]))
    source = resolve_source(model, components, None, family)
    return load_transformer(source, _stored_dtype(weight_files(source)))


def _quantize_layer(weight: torch.Tensor, fmt: Format):
    """(what the file stores for this weight, its dequantized values)."""
    if fmt.numeric == "fp8":
        q, scale = fp8_quantize(weight, fmt.per_channel)
        layer = comfy.QuantLayer(q, scale, "fp8")
        return layer, layer.dequantize()
    if fmt.numeric == "int8":
        q, scale = int8_quantize(weight)
        layer = comfy.QuantLayer(q, scale, "int8")
        return layer, layer.dequantize()
    blocks = gguf_file.quantize(weight, fmt.numeric)
    stored = gguf_file.GGUFTensor("", gguf_file.GGUF_TYPES[fmt.numeric], tuple(weight.shape), blocks)
    return blocks, gguf_file.dequantize(stored)


def export_transformer(model, fmt: str, out: str | Path, *, components: str | Path | None = None,
                       keep=None, progress: Progress | None = None, family: FamilySpec = KREA2) -> ExportResult:
    """Quantize a Krea 2 transformer into one file of format `fmt` (a file format of `quant.formats.FORMATS`).

    `model`: a diffusers directory, a single bf16 file (with `components` when its config cannot be inferred), a
    hub id, a built-in name (krea2-nano-turbo) or an already loaded Krea2Transformer2DModel. `keep`: fnmatch globs
    on diffusers module names of Linears to leave in high precision; None takes `family.quant_keep`, and a given
    tuple replaces it (extend with `(*KREA2.quant_keep, "transformer_blocks.0.*")`). `progress(done, total, name)`
    is called after each quantized layer. The file is written atomically, in `out`'s place."""
    spec = get_format(fmt)
    if not spec.is_file:
        raise WeightshopError(f"format {fmt!r} exists only in memory (training's base); file formats: "
                              f"{', '.join(n for n, f in _file_formats().items())}")
    out = Path(out)
    if out.suffix != spec.suffix:
        raise WeightshopError(f"{out}: a {fmt} file must end in {spec.suffix}")
    keep = tuple(family.quant_keep if keep is None else keep)
    transformer = _load_for_export(model, components, family)
    quantize, kept, unfit = plan_layers(transformer, spec, keep)
    if not quantize:
        raise WeightshopError(f"no Linear layer is left to quantize: the keep patterns {list(keep)} match them all")
    state = {k: v.detach() for k, v in transformer.state_dict().items()}
    source_bytes = sum(v.numel() for v in state.values()) * 2
    stored, errors = {}, {}
    with torch.no_grad():
        for i, name in enumerate(quantize):
            weight = state.pop(f"{name}.weight")
            stored[name], dequantized = _quantize_layer(weight, spec)
            errors[name] = relative_error(weight, dequantized)
            if progress is not None:
                progress(i + 1, len(quantize), name)
    plain = diffusers_to_original(state)
    if spec.container == "gguf":
        # Only Linear weights may stay 16-bit: diffusers' GGUF loader turns every non-F32/F16 tensor into blocks.
        linear_weights = {_original_layer(n) + ".weight" for n in kept}
        plain = {k: v if (k in linear_weights or v.dtype == torch.float16) else v.float() for k, v in plain.items()}
        gguf_file.write_gguf(out, {_original_layer(n) + ".weight": (b, spec.numeric) for n, b in stored.items()},
                             plain, architecture=ARCHITECTURE, file_type=spec.numeric,
                             metadata={"format": fmt, "kept": sorted(kept), "keep_patterns": list(keep)})
    else:
        comfy.write_comfy(out, {_original_layer(n): layer for n, layer in stored.items()}, plain, spec.container,
                          kept=kept, keep_patterns=keep, format_name=fmt)
    return ExportResult(out, fmt, out.stat().st_size, source_bytes, quantize, kept, errors, keep, unfit)


def quantize_in_memory(model: torch.nn.Module, fmt: str, keep=None, *, share_by_shape: bool = False,
                       family: FamilySpec = KREA2) -> list[str]:
    """Turn `model`'s Linears (all but `keep`'s, as `export_transformer` picks them) into format `fmt`'s layers in
    place, on their own device and computing in their own dtype, as loading the exported file would: no file
    written. Returns the names quantized.

    `share_by_shape` quantizes the first weight of each shape only and gives every other layer of that shape a copy
    of its blocks: for benchmarks on random weights (speed and memory do not depend on the values), where
    quantizing 12.8 B parameters with GGUF's CPU quantizers would take longer than the measurement."""
    from weightshop.quant.layers import Float8Linear, Float8MatmulLinear, Int8Linear, Int8MatmulLinear

    spec = get_format(fmt)
    keep = tuple(family.quant_keep if keep is None else keep)
    names, _, _ = plan_layers(model, spec, keep)
    modules = dict(model.named_modules())
    by_shape: dict[tuple[int, ...], object] = {}
    with torch.no_grad():
        for name in names:
            linear = modules[name]
            weight, dtype, device = linear.weight, linear.weight.dtype, linear.weight.device
            shape = tuple(weight.shape)
            if spec.numeric in ("fp8", "int8", "nf4") and spec.container != "gguf":
                if spec.numeric == "nf4":
                    raise WeightshopError("nf4 is bitsandbytes' in-memory format: use quant.layers.to_nf4")
                if share_by_shape and shape in by_shape:
                    q, scale = by_shape[shape]
                else:
                    q, scale = (fp8_quantize(weight, spec.per_channel) if spec.numeric == "fp8"
                                else int8_quantize(weight))
                    if share_by_shape:
                        by_shape[shape] = (q, scale)
                linear_type = (Float8MatmulLinear if fmt == "fp8-mm" else Float8Linear if spec.numeric == "fp8"
                               else Int8MatmulLinear if fmt == "int8-mm" else Int8Linear)
                linear_type.adopt(linear, q.clone() if share_by_shape else q, scale.to(device), dtype)
                continue
            if share_by_shape and shape in by_shape:
                blocks = by_shape[shape]
            else:
                blocks = gguf_file.quantize(weight, spec.numeric).to(device)
                if share_by_shape:
                    by_shape[shape] = blocks
            stored = gguf_file.GGUFTensor(name, gguf_file.GGUF_TYPES[spec.numeric], shape,
                                          blocks.clone() if share_by_shape else blocks)
            _swap_in(model, name, gguf_linear(linear, stored, dtype))
    return names


def _file_formats() -> dict[str, Format]:
    from weightshop.quant.formats import FORMATS

    return {n: f for n, f in FORMATS.items() if f.is_file}


# ---------------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Parsed:
    """A quantized file's content in diffusers names: quantized layers (module name -> stored form) and the rest."""

    container: str
    layers: dict[str, object]  # comfy.QuantLayer or gguf_file.GGUFTensor
    plain: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]  # logical shapes of every weight, for the config


def _layer_shape(layer) -> tuple[int, ...]:
    return tuple(layer.q.shape) if isinstance(layer, comfy.QuantLayer) else tuple(layer.shape)


def _parse(path: Path) -> _Parsed:
    container = file_container(path)
    if container == "gguf":
        parsed = gguf_file.read_gguf(path)
        layers = {k.removesuffix(".weight"): t for k, t in parsed.tensors.items() if t.quantized}
        stray = [k for k in layers if f"{k}.weight" not in parsed.tensors]
        if stray:
            raise WeightshopError(f"{path}: tensor {stray[0]} is quantized ({layers[stray[0]].type}) but is not a "
                                  "Linear weight; only .weight tensors may be blocks")
        plain = {k: t.data for k, t in parsed.tensors.items() if not t.quantized}
    else:
        parsed = comfy.read_comfy(path)
        layers, plain = parsed.layers, parsed.plain
    shapes = {k: tuple(v.shape) for k, v in plain.items()}
    shapes.update({f"{k}.weight": _layer_shape(v) for k, v in layers.items()})
    if is_original_layout(shapes):
        from weightshop.models.shape import original_shapes_to_diffusers

        layers = {original_to_diffusers_key(f"{k}.weight").removesuffix(".weight"): v for k, v in layers.items()}
        return _Parsed(container, layers, original_to_diffusers(plain), original_shapes_to_diffusers(shapes))
    if not is_diffusers_layout(shapes):
        raise WeightshopError(f"{path} is a {container} file but not a Krea 2 transformer: it has no "
                              "txtfusion.projector / text_fusion.projector weight")
    return _Parsed(container, layers, plain, shapes)


def _swap_in(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def gguf_linear(linear: torch.nn.Linear, t: gguf_file.GGUFTensor, compute_dtype: torch.dtype):
    import gguf
    from accelerate import init_empty_weights
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    with init_empty_weights():
        module = GGUFLinear(linear.in_features, linear.out_features, linear.bias is not None,
                            compute_dtype=compute_dtype)
    module.weight = GGUFParameter(t.data, quant_type=gguf.GGMLQuantizationType[t.type])
    if linear.bias is not None:
        module.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    module.source_cls = torch.nn.Linear
    return module.requires_grad_(False)


def load_quantized_transformer(path: str | Path, config: dict | str | Path | None = None,
                               dtype: torch.dtype = torch.float32):
    """A Krea2Transformer2DModel from a comfy_quant, fp8_scaled or GGUF file, its quantized Linears kept quantized
    (computing in `dtype`) and every other weight cast to `dtype` (norms stay fp32, as diffusers keeps them)."""
    from accelerate import init_empty_weights
    from diffusers import Krea2Transformer2DModel

    from weightshop.models.loading import merge_transformer_config
    from weightshop.models.shape import infer_transformer_config
    from weightshop.quant.layers import Float8Linear, Int8Linear

    path = Path(path)
    parsed = _parse(path)
    config = merge_transformer_config(path, infer_transformer_config(parsed.shapes), config)
    with init_empty_weights():
        model = Krea2Transformer2DModel.from_config(config)
    expected = set(model.state_dict())
    given = set(parsed.plain) | {f"{k}.weight" for k in parsed.layers}
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise WeightshopError(
            f"{path} does not fit Krea2Transformer2DModel: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    modules = dict(model.named_modules())
    for name, layer in parsed.layers.items():
        module = modules[name]
        if not isinstance(module, torch.nn.Linear) or _layer_shape(layer) != tuple(module.weight.shape):
            raise WeightshopError(f"{path}: quantized layer {name} {_layer_shape(layer)} does not match the model's "
                                  f"{type(module).__name__} {tuple(getattr(module, 'weight', torch.empty(0)).shape)}")
    model.load_state_dict(parsed.plain, strict=False, assign=True)
    from weightshop.models.loading import kept_in_fp32

    for name, param in model.named_parameters():
        if name.removesuffix(".weight") in parsed.layers or not param.is_floating_point():
            continue
        target = torch.float32 if dtype != torch.float32 and kept_in_fp32(model, name) else dtype
        param.data = param.data.to(target)
        param.requires_grad_(False)
    for name, layer in parsed.layers.items():
        if isinstance(layer, comfy.QuantLayer):
            linear_type = Float8Linear if layer.numeric == "fp8" else Int8Linear
            linear_type.adopt(modules[name], layer.q, layer.scale, dtype)
        else:
            _swap_in(model, name, gguf_linear(modules[name], layer, dtype))
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# Describing a file from its header


def describe_quantized(path: str | Path) -> dict:
    """A quantized transformer file from its header alone: container, layers per format, what was kept, its bytes
    and the bf16 size it replaces (every logical weight at 2 bytes, scales and markers excluded)."""
    path = Path(path)
    container = file_container(path)
    if container is None:
        raise WeightshopError(f"{path} is not a quantized transformer file (comfy_quant, fp8_scaled or GGUF)")
    if container == "gguf":
        header = gguf_file.gguf_header(path)
        kinds = {k: kind for k, (kind, _) in header["tensors"].items()}
        blocks = Counter(kind for kind in kinds.values() if kind not in gguf_file.PLAIN_TYPES.values())
        params = sum(math.prod(shape) for _, shape in header["tensors"].values())
        meta = header["metadata"]
        out = {"container": "gguf", "layout": "gguf", "architecture": header["architecture"],
               "quantized_layers": sum(blocks.values()), "formats": dict(blocks),
               "dtypes": dict(Counter(kinds.values())), "kept": meta.get("kept", []),
               "keep_patterns": meta.get("keep_patterns", []), "format": meta.get("format")}
    else:
        from weightshop.io import safetensors_shapes

        out = comfy.describe_comfy(path)
        params = sum(math.prod(s) for k, s in safetensors_shapes(path).items() if not comfy.is_side_tensor(k))
    file_bytes = path.stat().st_size
    out.update(parameters=params, file_bytes=file_bytes, bf16_bytes=2 * params,
               ratio=file_bytes / (2 * params) if params else None)
    return out
