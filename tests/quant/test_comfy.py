"""ComfyUI's comfy_quant and fp8_scaled layouts: written as documented, parsed back exactly, and bad files named."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightshop.errors import WeightshopError
from weightshop.quant import comfy
from weightshop.quant.numerics import fp8_quantize, int8_quantize


def _layers():
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(32, 64, generator=g) for _ in range(3)]
    return {
        "blocks.0.attn.wq": comfy.QuantLayer(*fp8_quantize(w[0]), "fp8"),
        "blocks.0.attn.wk": comfy.QuantLayer(*fp8_quantize(w[1], per_channel=True), "fp8"),
        "blocks.0.mlp.down": comfy.QuantLayer(*int8_quantize(w[2]), "int8"),
    }


PLAIN = {"first.weight": torch.randn(32, 16).bfloat16(), "first.bias": torch.randn(32)}


def _equal(a: comfy.QuantLayer, b: comfy.QuantLayer) -> bool:
    same_q = a.q.dtype == b.q.dtype and torch.equal(a.q.view(torch.uint8), b.q.view(torch.uint8))
    return a.numeric == b.numeric and same_q and torch.equal(a.scale.reshape(-1), b.scale.reshape(-1))


def test_comfy_quant_layout_as_documented_and_exact_round_trip(tmp_path):
    layers = _layers()
    path = comfy.write_comfy(tmp_path / "m.safetensors", layers, PLAIN, "comfy_quant", kept=["img_in"],
                             keep_patterns=["img_in"], format_name="mixed")
    raw = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    table = json.loads(meta["_quantization_metadata"])
    assert table == {"format_version": "1.0", "layers": {"blocks.0.attn.wq": {"format": "float8_e4m3fn"},
                                                         "blocks.0.attn.wk": {"format": "float8_e4m3fn"},
                                                         "blocks.0.mlp.down": {"format": "int8_tensorwise"}}}
    assert json.loads(meta["weightshop.kept"]) == ["img_in"]
    assert json.loads(meta["weightshop.keep_patterns"]) == ["img_in"]
    conf = {n: json.loads(bytes(raw[f"{n}.comfy_quant"].tolist())) for n in layers}
    assert conf["blocks.0.attn.wq"] == {"format": "float8_e4m3fn"}
    assert conf["blocks.0.attn.wk"] == {"format": "float8_e4m3fn", "per_row": True}
    assert conf["blocks.0.mlp.down"] == {"format": "int8_tensorwise", "per_row": True}
    assert raw["blocks.0.attn.wq.comfy_quant"].dtype == torch.uint8
    assert raw["blocks.0.attn.wq.weight"].dtype == torch.float8_e4m3fn
    assert raw["blocks.0.mlp.down.weight"].dtype == torch.int8
    assert raw["blocks.0.attn.wq.weight_scale"].shape == () and raw["blocks.0.attn.wk.weight_scale"].shape == (32, 1)
    assert all(raw[f"{n}.weight_scale"].dtype == torch.float32 for n in layers)
    parsed = comfy.read_comfy(path)
    assert parsed.layout == "comfy_quant" and parsed.kept == ["img_in"]
    assert set(parsed.layers) == set(layers) and all(_equal(parsed.layers[n], layers[n]) for n in layers)
    assert set(parsed.plain) == set(PLAIN) and all(torch.equal(parsed.plain[k], PLAIN[k]) for k in PLAIN)
    described = comfy.describe_comfy(path)
    assert described["formats"] == {"float8_e4m3fn": 2, "int8_tensorwise": 1} and described["per_row"] == "mixed"


def test_fp8_scaled_layout_as_documented_and_refuses_what_it_cannot_hold(tmp_path):
    layers = {"blocks.0.attn.wq": _layers()["blocks.0.attn.wq"]}
    path = comfy.write_comfy(tmp_path / "s.safetensors", layers, PLAIN, "fp8_scaled")
    raw = load_file(str(path))
    assert raw["scaled_fp8"].dtype == torch.float8_e4m3fn and raw["scaled_fp8"].numel() == 0
    assert raw["blocks.0.attn.wq.scale_weight"].shape == () and "blocks.0.attn.wq.weight_scale" not in raw
    assert not any(k.endswith(".comfy_quant") for k in raw)
    parsed = comfy.read_comfy(path)
    assert parsed.layout == "fp8_scaled" and _equal(parsed.layers["blocks.0.attn.wq"], layers["blocks.0.attn.wq"])
    assert set(parsed.plain) == set(PLAIN)
    for name in ("blocks.0.attn.wk", "blocks.0.mlp.down"):  # per-row fp8, int8: comfy_quant only
        with pytest.raises(WeightshopError, match="fp8_scaled layout holds fp8 layers with one scale per tensor"):
            comfy.write_comfy(tmp_path / "x.safetensors", {name: _layers()[name]}, {}, "fp8_scaled")


def test_layout_detection_from_header_and_keys():
    assert comfy.detect_layout(["a.weight", "a.comfy_quant"]) == "comfy_quant"
    assert comfy.detect_layout(["a.weight"], {"_quantization_metadata": "{}"}) == "comfy_quant"
    assert comfy.detect_layout(["a.weight", "scaled_fp8", "a.scale_weight"]) == "fp8_scaled"
    assert comfy.detect_layout(["model.diffusion_model.scaled_fp8"]) == "fp8_scaled"
    assert comfy.detect_layout(["a.weight", "a.bias"]) is None


def test_float8_stored_as_uint8_is_read_as_float8(tmp_path):
    layer = _layers()["blocks.0.attn.wq"]
    tensors, meta = comfy.comfy_state_dict({"l": layer}, {}, "comfy_quant")
    tensors["l.weight"] = tensors["l.weight"].view(torch.uint8)
    save_file(tensors, str(tmp_path / "u.safetensors"), metadata=meta)
    assert _equal(comfy.read_comfy(tmp_path / "u.safetensors").layers["l"], layer)


def _broken(tmp_path, change, drop_meta=False):
    tensors, meta = comfy.comfy_state_dict(_layers(), dict(PLAIN), "comfy_quant")
    change(tensors)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=None if drop_meta else meta)
    return path


def test_bad_files_name_file_and_key(tmp_path):
    def bad_json(t):
        t["blocks.0.attn.wq.comfy_quant"] = torch.tensor(list(b"{format: fp8"), dtype=torch.uint8)

    def no_scale(t):
        del t["blocks.0.mlp.down.weight_scale"]

    def unknown(t):
        t["blocks.0.attn.wq.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)

    def wrong_dtype(t):
        t["blocks.0.mlp.down.weight"] = t["blocks.0.mlp.down.weight"].float()

    def bad_scale(t):
        t["blocks.0.attn.wk.weight_scale"] = torch.ones(5)

    def stray_scale(t):
        t["orphan.weight_scale"] = torch.ones(())

    cases = [(bad_json, r"bad\.safetensors: blocks\.0\.attn\.wq\.comfy_quant does not hold JSON"),
             (no_scale, r"blocks\.0\.mlp\.down\.weight_scale is missing"),
             (unknown, r"wq\.comfy_quant has format 'nvfp4'.*accepted: float8_e4m3fn, int8_tensorwise"),
             (wrong_dtype, r"blocks\.0\.mlp\.down\.weight is a 2-D torch\.float32 tensor.*int8"),
             (bad_scale, r"blocks\.0\.attn\.wk\.weight_scale has shape \(5,\)"),
             (stray_scale, r"orphan\.weight_scale has no quantized weight")]
    for change, message in cases:
        with pytest.raises(WeightshopError, match=message):
            comfy.read_comfy(_broken(tmp_path, change))
    path = tmp_path / "meta.safetensors"
    tensors, meta = comfy.comfy_state_dict(_layers(), {}, "comfy_quant")
    save_file(tensors, str(path), metadata={**meta, "_quantization_metadata": "not json"})
    with pytest.raises(WeightshopError, match="_quantization_metadata is not the expected JSON"):
        comfy.read_comfy(path)
    save_file(dict(PLAIN), str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightshopError, match="not a ComfyUI quantized file"):
        comfy.read_comfy(tmp_path / "plain.safetensors")
