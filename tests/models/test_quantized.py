"""Quantized Krea 2 files on krea2-nano-turbo: export -> import is exact in every format, the files have their
documented layouts, errors stay within each format's bound, a LoRA applies on every quantized base, `info` reads
them, bad files are named."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightshop.errors import WeightshopError
from weightshop.generate import GenerateRequest, generate
from weightshop.lora import LoraRequest, apply_loras
from weightshop.lora.formats import CanonicalLora, LoraModule, linear_shapes, save_canonical
from weightshop.models import builtin
from weightshop.models.info import describe
from weightshop.models.keys import diffusers_to_original_key
from weightshop.models.loading import load_model, load_single_file_transformer, load_transformer, resolve_source
from weightshop.models.quantized import describe_quantized, export_transformer, file_container
from weightshop.models.spec import KREA2
from weightshop.quant import comfy, gguf_file
from weightshop.quant.formats import FILE_FORMATS, get_format
from weightshop.quant.layers import Float8Linear, Int8Linear
from weightshop.quant.numerics import (
    fp8_error_bound,
    fp8_quantize,
    int8_error_bound,
    int8_quantize,
    q4_0_error_bound,
    q4_k_error_bound,
    q8_0_error_bound,
    relative_error,
)
from tests.models.test_loading import forward_once

pytestmark = pytest.mark.skipif(not builtin.installed(), reason="krea2-nano is not built")

COMPONENTS = builtin.TURBO_DIR
CONFIG = builtin.TURBO_DIR / "transformer"
GGUF_BOUNDS = {"q8_0": q8_0_error_bound, "q4_0": q4_0_error_bound, "q4_k": q4_k_error_bound}


@pytest.fixture(scope="module")
def source():
    """krea2-nano-turbo's transformer as stored (bf16)."""
    return load_transformer(resolve_source("krea2-nano-turbo"), torch.bfloat16)


@pytest.fixture(scope="module")
def exports(source, tmp_path_factory):
    """One file per file format, exported from the built-in name (the path users take)."""
    root = tmp_path_factory.mktemp("quantized")
    return {fmt: export_transformer("krea2-nano-turbo", fmt, root / f"turbo-{fmt}{get_format(fmt).suffix}")
            for fmt in FILE_FORMATS}


def _linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _expected(weight, fmt):
    """What the file must hold for this weight: the format's quantizer applied to the source weight."""
    spec = get_format(fmt)
    if spec.numeric == "fp8":
        return fp8_quantize(weight, spec.per_channel)
    if spec.numeric == "int8":
        return int8_quantize(weight)
    return gguf_file.quantize(weight, spec.numeric), None


def test_export_result_says_what_was_done(exports, source):
    block_linears = [n for n in _linears(source) if n.startswith("transformer_blocks.")]
    other_linears = [n for n in _linears(source) if not n.startswith("transformer_blocks.")]
    params = sum(p.numel() for p in source.state_dict().values())
    for fmt, result in exports.items():
        assert result.format == fmt and result.path.is_file() and result.file_bytes == result.path.stat().st_size
        assert result.source_bytes == 2 * params
        assert sorted(result.quantized) == sorted(block_linears) and len(block_linears) == 6 * 8
        assert sorted(result.kept) == sorted(other_linears) and result.unfit == []
        assert result.keep_patterns == KREA2.quant_keep and set(result.errors) == set(block_linears)
        assert result.file_bytes < result.source_bytes
        assert json.loads(json.dumps(result.as_dict()))["path"] == str(result.path)
    four_bit = exports["q4_k"].file_bytes
    assert four_bit == exports["q4_0"].file_bytes < exports["fp8"].file_bytes < exports["q8_0"].file_bytes


def test_round_trip_reproduces_the_quantized_weights_bitwise(exports, source):
    src = dict(source.named_parameters())
    for fmt, result in exports.items():
        model = load_single_file_transformer(result.path, CONFIG, torch.float32)
        linears = _linears(model)
        for name in result.quantized:
            module = linears[name]
            q, scale = _expected(src[f"{name}.weight"], fmt)
            if get_format(fmt).container == "gguf":
                from diffusers.quantizers.gguf.utils import GGUFLinear

                assert isinstance(module, GGUFLinear) and module.weight.quant_type.name == fmt.upper()
                assert torch.equal(module.weight.as_tensor(), q)
            else:
                assert type(module) is (Int8Linear if fmt == "int8" else Float8Linear)
                assert module.weight.dtype == q.dtype and torch.equal(module.weight.view(torch.uint8),
                                                                      q.view(torch.uint8))
                assert torch.equal(module.weight_scale.reshape(-1), scale.reshape(-1))
        quantized = {f"{n}.weight" for n in result.quantized}
        for key, value in model.state_dict().items():  # everything else: the source's values, in fp32
            if key in quantized or key.endswith("weight_scale"):
                continue
            assert torch.equal(value, src[key].float()), (fmt, key)


def test_files_have_their_documented_layouts(exports):
    wq = diffusers_to_original_key("transformer_blocks.0.attn.to_q.weight").removesuffix(".weight")
    assert wq == "blocks.0.attn.wq"
    for fmt, result in exports.items():
        originals = {diffusers_to_original_key(f"{n}.weight").removesuffix(".weight") for n in result.quantized}
        container = get_format(fmt).container
        assert file_container(result.path) == container
        if container == "gguf":
            header = gguf_file.gguf_header(result.path)
            assert header["architecture"] == "krea2"
            assert header["metadata"]["kept"] == sorted(result.kept) and header["metadata"]["format"] == fmt
            kinds = {k: kind for k, (kind, _) in header["tensors"].items()}
            assert {k for k, kind in kinds.items() if kind == fmt.upper()} == {f"{n}.weight" for n in originals}
            assert kinds["first.weight"] == "BF16" and kinds["last.linear.bias"] == "F32"
            assert kinds["blocks.0.prenorm.scale"] == "F32" and kinds["blocks.0.mod.lin"] == "F32"
            assert header["tensors"]["blocks.0.mlp.down.weight"][1] == (256, 768)  # torch order
            keys = set(kinds)
        else:
            with safe_open(str(result.path), "pt") as f:
                keys, meta = set(f.keys()), f.metadata()
                dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
            assert json.loads(meta["weightshop.kept"]) == sorted(result.kept)
            assert tuple(json.loads(meta["weightshop.keep_patterns"])) == KREA2.quant_keep
            assert dtypes["first.weight"] == "BF16"
            stored = "I8" if fmt == "int8" else "F8_E4M3"
            assert {k.removesuffix(".weight") for k, d in dtypes.items() if d == stored and k.endswith(".weight")} \
                == originals
            if container == "fp8_scaled":
                assert "scaled_fp8" in keys and all(f"{n}.scale_weight" in keys for n in originals)
                assert "_quantization_metadata" not in meta
            else:
                table = json.loads(meta["_quantization_metadata"])
                assert table["format_version"] == "1.0" and set(table["layers"]) == originals
                raw = load_file(str(result.path))
                for n in originals:
                    conf = json.loads(bytes(raw[f"{n}.comfy_quant"].tolist()))
                    assert conf == comfy.comfy_quant_config("int8" if fmt == "int8" else "fp8",
                                                            get_format(fmt).per_channel)
                    assert raw[f"{n}.weight_scale"].dtype == torch.float32
                    assert raw[f"{n}.weight_scale"].shape == ((256 if "wq" in n else raw[f"{n}.weight"].shape[0], 1)
                                                              if get_format(fmt).per_channel else ())
        assert not any(k.startswith(("transformer_blocks.", "img_in", "final_layer")) for k in keys)
        assert {"last.modulation.lin", "last.linear.weight", "tproj.1.weight", "txtmlp.0.scale"} <= keys


def test_dequantized_error_within_each_formats_bound(exports, source):
    src = dict(source.named_parameters())
    worst = {}
    for fmt, result in exports.items():
        model = load_single_file_transformer(result.path, CONFIG, torch.float32)
        linears = _linears(model)
        for name in result.quantized:
            w = src[f"{name}.weight"].float()
            module = linears[name]
            spec = get_format(fmt)
            if spec.container == "gguf":
                t = gguf_file.GGUFTensor(name, fmt.upper(), tuple(w.shape), module.weight.as_tensor())
                deq, bound = gguf_file.dequantize(t), GGUF_BOUNDS[fmt](w)
            else:
                deq = module.dequantized_weight()
                bound = fp8_error_bound(w, module.weight_scale) if spec.numeric == "fp8" else \
                    int8_error_bound(module.weight_scale) + 127 * 2.0 ** -24 * module.weight_scale
            assert ((deq - w).abs() <= bound).all(), (fmt, name)
            assert result.errors[name] == pytest.approx(relative_error(w, deq), rel=1e-6)
        worst[fmt] = max(result.errors.values())
    assert worst["q8_0"] < worst["int8"] < worst["fp8"] < worst["q4_k"] < worst["q4_0"] < 0.1


def _lora(transformer, seed=0):
    """Rank 4 on every block Linear (all quantized) and on img_in (kept), alpha == rank."""
    g = torch.Generator().manual_seed(seed)
    modules = {name: LoraModule(torch.randn(4, i, generator=g) * 0.05, torch.randn(o, 4, generator=g) * 0.05, 4.0)
               for name, (o, i) in linear_shapes(transformer).items()
               if name.startswith("transformer_blocks.") or name == "img_in"}
    return CanonicalLora(modules, {})


@pytest.fixture(scope="module")
def bf16_reference():
    return load_model("krea2-nano-turbo", dtype="fp32")


def _lora_delta(pipeline, lora_path):
    before = forward_once(pipeline.transformer)
    apply_loras(pipeline, [LoraRequest(lora_path)])
    try:
        return before, forward_once(pipeline.transformer) - before
    finally:
        pipeline.unload_lora_weights()


def test_lora_on_every_quantized_base_moves_the_output_as_on_bf16(exports, bf16_reference, tmp_path):
    """Two checks per format.

    1. Exactness: on the quantized base, the LoRA changes the output exactly as it does on a plain model holding the
       same weights dequantized (float32 compute; GGUF's dequantization rounds to fp16 first, hence 1e-3).
    2. Against bf16: the LoRA's change differs from the one on the bf16 base only because the base's activations
       moved. Measured on nano, ||delta_q - delta|| / ||delta|| is 3-5x the base's own output drift
       ||y_q - y|| / ||y|| (fp8 0.074 vs 0.014, int8 0.010 vs 0.003, q8_0 0.007 vs 0.002, q4_k 0.19 vs 0.04);
       the tolerance is 8x that drift plus 1e-3, so a LoRA that lands on the wrong modules or at the wrong scale
       on a quantized Linear (a delta error of order 1) fails while quantization noise passes.
    """
    lora_path = save_canonical(_lora(bf16_reference.pipeline.transformer), tmp_path / "l.safetensors")
    y, delta = _lora_delta(bf16_reference.pipeline, lora_path)
    reference_linears = _linears(bf16_reference.pipeline.transformer)
    for fmt, result in exports.items():
        quantized = load_model(result.path, components=COMPONENTS, checkpoint="turbo", dtype="fp32")
        assert quantized.source.kind == "single_file" and quantized.checkpoint.name == "turbo"
        y_q, delta_q = _lora_delta(quantized.pipeline, lora_path)
        drift = float((y_q - y).norm() / y.norm())
        moved = float((delta_q - delta).norm() / delta.norm())
        assert moved <= 8 * drift + 1e-3, (fmt, moved, drift)
        # the same LoRA on the bf16 model holding the dequantized weights
        linears = _linears(quantized.pipeline.transformer)
        saved = {}
        for name in result.quantized:
            module = linears[name]
            if get_format(fmt).container == "gguf":
                from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

                deq = dequantize_gguf_tensor(module.weight).float()
            else:
                deq = module.dequantized_weight().float()
            saved[name] = reference_linears[name].weight.data
            reference_linears[name].weight.data = deq
        try:
            y_deq, delta_deq = _lora_delta(bf16_reference.pipeline, lora_path)
        finally:
            for name, w in saved.items():
                reference_linears[name].weight.data = w
        tolerance = 1e-3 if get_format(fmt).container == "gguf" else 1e-5
        assert float((y_q - y_deq).norm() / y_deq.norm()) <= tolerance, fmt
        assert float((delta_q - delta_deq).norm() / delta_deq.norm()) <= 10 * tolerance, fmt


def test_generate_runs_on_quantized_files(exports):
    for fmt in ("int8", "q4_k"):
        model = load_model(exports[fmt].path, components=COMPONENTS, checkpoint="turbo", dtype="fp32")
        image = generate(model, GenerateRequest(prompts=["a red circle"], seeds=[1], steps=2))[0].image
        pixels = np.asarray(image, dtype=np.float64)
        assert pixels.shape == (64, 64, 3) and pixels.std() > 1
        assert len(model.transformer_hash()) == 64


def test_info_describes_each_format_from_its_header(exports, source):
    params = sum(p.numel() for p in source.state_dict().values())
    for fmt, result in exports.items():
        info = describe(result.path, components=COMPONENTS, checkpoint="turbo")
        q = info["quantization"]
        assert info["layout"] == "single_file" and info["transformer_parameters"] == params
        assert info["transformer_config"]["num_layers"] == 6
        assert q == describe_quantized(result.path)
        assert q["quantized_layers"] == 48 and sum(q["formats"].values()) == 48
        assert q["bf16_bytes"] == result.source_bytes and q["file_bytes"] == result.file_bytes
        assert q["kept"] == sorted(result.kept) and q["format"] == fmt
        expected = {"fp8": "float8_e4m3fn", "fp8-channel": "float8_e4m3fn", "int8": "int8_tensorwise",
                    "fp8-scaled": "float8_e4m3fn (scaled)"}.get(fmt, fmt.upper())
        assert q["formats"] == {expected: 48}
    assert describe("krea2-nano-turbo")["quantization"] is None


def test_keep_patterns_and_unfit_layers(tmp_path):
    result = export_transformer("krea2-nano-turbo", "q4_k", tmp_path / "all.gguf", keep=())
    # img_in (32 inputs), time_embed.linear_1 (128) and the text side (64) cannot hold 256-weight blocks
    assert "img_in" in result.unfit and "txt_in.linear_1" in result.unfit and set(result.unfit) == set(result.kept)
    assert "time_mod_proj" in result.quantized and "final_layer.linear" in result.quantized
    calls = []
    result = export_transformer("krea2-nano-turbo", "int8", tmp_path / "k.safetensors",
                                keep=(*KREA2.quant_keep, "transformer_blocks.0.*", "*.ff.down"),
                                progress=lambda done, total, name: calls.append((done, total, name)))
    assert calls == [(i + 1, len(result.quantized), n) for i, n in enumerate(result.quantized)]
    assert not any(n.startswith("transformer_blocks.0.") or n.endswith("ff.down") for n in result.quantized)
    assert len(result.quantized) == 5 * 7
    model = load_single_file_transformer(result.path, CONFIG, torch.float32)
    assert type(_linears(model)["transformer_blocks.0.attn.to_q"]) is torch.nn.Linear
    assert type(_linears(model)["transformer_blocks.1.attn.to_q"]) is Int8Linear


def test_export_refuses_what_it_cannot_do(exports, tmp_path):
    with pytest.raises(WeightshopError, match="must end in .gguf"):
        export_transformer("krea2-nano-turbo", "q8_0", tmp_path / "x.safetensors")
    with pytest.raises(WeightshopError, match="exists only in memory"):
        export_transformer("krea2-nano-turbo", "fp8-mm", tmp_path / "x.safetensors")
    with pytest.raises(WeightshopError, match="already quantized"):
        export_transformer(exports["fp8"].path, "int8", tmp_path / "x.safetensors")
    with pytest.raises(WeightshopError, match="no Linear layer is left"):
        export_transformer("krea2-nano-turbo", "int8", tmp_path / "x.safetensors", keep=("*",))
    with pytest.raises(WeightshopError, match="unknown format 'q5_k'"):
        export_transformer("krea2-nano-turbo", "q5_k", tmp_path / "x.gguf")
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_quantized_files_are_named(exports, tmp_path):
    raw = load_file(str(exports["fp8"].path))
    with safe_open(str(exports["fp8"].path), "pt") as f:
        meta = f.metadata()
    broken = dict(raw)
    broken["blocks.3.mlp.up.comfy_quant"] = torch.tensor(list(b'{"format": "float8_e5m2"}'), dtype=torch.uint8)
    save_file(broken, str(tmp_path / "e5m2.safetensors"), metadata=meta)
    with pytest.raises(WeightshopError, match=r"e5m2\.safetensors: blocks\.3\.mlp\.up\.comfy_quant has format "
                                              r"'float8_e5m2'.*accepted: float8_e4m3fn, int8_tensorwise"):
        load_model(tmp_path / "e5m2.safetensors", components=COMPONENTS, dtype="fp32")
    missing = {k: v for k, v in raw.items() if not k.startswith("blocks.2.attn.wk.")}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata={
        **meta, "_quantization_metadata": json.dumps({"format_version": "1.0", "layers": {}})})
    with pytest.raises(WeightshopError, match=r"does not fit Krea2Transformer2DModel: missing "
                                              r"\['transformer_blocks\.2\.attn\.to_k\.weight'\]"):
        load_single_file_transformer(tmp_path / "missing.safetensors", CONFIG)
    other = gguf_file.write_gguf(tmp_path / "other.gguf", {"x.weight": (gguf_file.quantize(torch.ones(2, 32), "q8_0"),
                                                                       "q8_0")}, {}, architecture="llama")
    with pytest.raises(WeightshopError, match="other.gguf is a gguf file but not a Krea 2 transformer"):
        load_single_file_transformer(other, CONFIG)
    assert resolve_source(exports["q4_k"].path, COMPONENTS).kind == "single_file"
    (tmp_path / "model.bin").write_bytes(b"pickle")
    with pytest.raises(WeightshopError, match="not a .safetensors file or a .gguf file"):
        resolve_source(tmp_path / "model.bin", COMPONENTS)


def test_diffusers_own_gguf_loader_reads_our_files_to_the_same_output(exports):
    """diffusers' from_single_file (GGUFQuantizationConfig) on our GGUF: the same modules and the same output."""
    from diffusers import GGUFQuantizationConfig, Krea2Transformer2DModel

    path = exports["q4_k"].path
    theirs = Krea2Transformer2DModel.from_single_file(
        str(path), config=str(CONFIG), torch_dtype=torch.float32,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32))
    ours = load_single_file_transformer(path, CONFIG, torch.float32)
    assert set(dict(theirs.named_parameters())) == set(dict(ours.named_parameters()))
    assert torch.equal(forward_once(theirs), forward_once(ours))


@pytest.mark.parametrize("fmt", ["fp8", "int8", "q4_k"])
def test_quantizing_in_memory_equals_loading_the_exported_file(fmt, tmp_path):
    """`quantize_in_memory` (the benches' path: no file) makes the very layers loading the exported file makes; with
    `share_by_shape` every layer of a shape holds the first one's values, and the model still runs."""
    from weightshop.models.quantized import quantize_in_memory

    out = tmp_path / f"t{get_format(fmt).suffix}"
    export_transformer("krea2-nano-turbo", fmt, out)
    loaded = load_single_file_transformer(out, COMPONENTS / "transformer")
    model = load_transformer(resolve_source("krea2-nano-turbo"))
    names = quantize_in_memory(model, fmt)
    assert names and all(type(dict(model.named_modules())[n]) is type(dict(loaded.named_modules())[n]) for n in names)
    # same layers and values (state dicts equal bit for bit); the outputs agree to fp32 rounding (measured 5e-6: the
    # loaded model's tensors come from the file's buffers, in another memory layout)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k].float(), theirs[k].float()) and ours[k].dtype == theirs[k].dtype for k in ours)
    torch.testing.assert_close(forward_once(model), forward_once(loaded), rtol=1e-5, atol=2e-5)
    shared = load_transformer(resolve_source("krea2-nano-turbo"))
    quantize_in_memory(shared, fmt, share_by_shape=True)
    modules = dict(shared.named_modules())
    same = [n for n in names if n.endswith("attn.to_q")]
    first = modules[same[0]].weight
    assert all(torch.equal(modules[n].weight.view(torch.uint8), first.view(torch.uint8)) for n in same[1:])
    assert torch.isfinite(forward_once(shared)).all()
