"""GGUF files: the Q4_K quantizer against gguf-py's and diffusers' dequantizers, the header fields, reversed dims."""

import gguf
import numpy as np
import pytest
import torch
from diffusers.models.model_loading_utils import load_gguf_checkpoint
from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_blocks_Q4_K, dequantize_gguf_tensor

from weightshop.errors import WeightshopError
from weightshop.quant import gguf_file
from weightshop.quant.numerics import q4_k_dequantize, q4_k_quantize


def _weights():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 768, generator=g)
    w[0, :256] = torch.rand(256, generator=g) + 1  # a super-block of one sign (min > 0)
    w[1, :256] = -torch.rand(256, generator=g) - 1  # all negative
    w[2, :256] = 0  # all zero
    w[3, 5] = 50  # an outlier
    return w


def test_q4_k_matches_gguf_and_diffusers_dequantizers():
    w = _weights()
    blocks = q4_k_quantize(w)
    assert blocks.dtype == torch.uint8 and blocks.shape == (24, 3 * 144)
    mine = q4_k_dequantize(blocks)
    reference = torch.from_numpy(gguf.quants.dequantize(blocks.numpy(), gguf.GGMLQuantizationType.Q4_K))
    assert torch.equal(mine, reference)  # same fp32 arithmetic, same layout: bit for bit
    # diffusers dequantizes in fp16 (d * sc and the products round to fp16): equal within fp16's rounding of the
    # largest value a block holds (a few 2^-11 relative)
    theirs = dequantize_blocks_Q4_K(blocks.reshape(-1, 144), 256, 144).reshape(w.shape).float()
    block_max = w.abs().reshape(-1, 256).amax(-1, keepdim=True).expand(-1, 256).reshape(w.shape)
    assert ((theirs - mine).abs() <= 2.0 ** -8 * block_max).all()
    on_the_fly = dequantize_gguf_tensor(GGUFParameter(blocks, quant_type=gguf.GGMLQuantizationType.Q4_K))
    assert torch.equal(on_the_fly.float(), theirs)
    assert torch.equal(mine[2, :256], torch.zeros(256))


def test_q4_k_uses_its_levels():
    """Each sub-block's extremes land on (or within half a step of) q = 0 and q = 15: no level is wasted."""
    w = _weights()[4:]
    blocks = q4_k_quantize(w).reshape(-1, 144)
    qs = blocks[:, 16:]
    q = torch.stack([qs & 15, qs >> 4], dim=1)
    assert q.max() == 15 and q.min() == 0


def test_header_fields_and_reversed_dims(tmp_path):
    w = _weights()
    path = gguf_file.write_gguf(
        tmp_path / "m.gguf",
        {"blocks.0.attn.wq.weight": (gguf_file.quantize(w, "q4_k"), "q4_k"),
         "blocks.0.attn.wk.weight": (gguf_file.quantize(w[:, :64], "q8_0"), "q8_0")},
        {"first.weight": torch.randn(24, 40).bfloat16(), "first.bias": torch.randn(24), "h": torch.randn(2, 3).half()},
        architecture="krea2", file_type="q4_k", metadata={"kept": ["img_in"], "format": "q4_k"})
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "krea2"
    assert reader.get_field("general.quantization_version").contents() == gguf.GGML_QUANT_VERSION
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert reader.get_field("weightshop.kept").contents() == '["img_in"]'
    tensors = {t.name: t for t in reader.tensors}
    # ggml lists the innermost dimension first: (in, out) for an (out, in) Linear weight
    assert tensors["blocks.0.attn.wq.weight"].shape.tolist() == [768, 24]
    assert tensors["first.weight"].shape.tolist() == [40, 24]
    assert tensors["blocks.0.attn.wq.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_K
    assert tensors["first.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    assert tensors["first.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    header = gguf_file.gguf_header(path)
    assert header["tensors"]["blocks.0.attn.wq.weight"] == ("Q4_K", (24, 768))
    assert header["metadata"] == {"kept": ["img_in"], "format": "q4_k"}
    assert gguf_file.gguf_shapes(path)["blocks.0.attn.wk.weight"] == (24, 64)
    parsed = gguf_file.read_gguf(path)
    assert torch.equal(parsed.tensors["blocks.0.attn.wq.weight"].data, gguf_file.quantize(w, "q4_k"))
    assert parsed.tensors["first.weight"].data.dtype == torch.bfloat16
    # diffusers' own GGUF reader sees the same blocks; F32/F16 come back as plain tensors
    theirs = load_gguf_checkpoint(str(path))
    assert isinstance(theirs["blocks.0.attn.wq.weight"], GGUFParameter)
    assert torch.equal(theirs["blocks.0.attn.wq.weight"].as_tensor(), parsed.tensors["blocks.0.attn.wq.weight"].data)
    assert type(theirs["first.bias"]) is torch.Tensor and type(theirs["h"]) is torch.Tensor


def test_q8_0_and_q4_0_are_gguf_py_s_own():
    w = _weights()
    for numeric, qtype in (("q8_0", gguf.GGMLQuantizationType.Q8_0), ("q4_0", gguf.GGMLQuantizationType.Q4_0)):
        expected = gguf.quants.quantize(w.numpy(), qtype)
        assert np.array_equal(gguf_file.quantize(w, numeric).numpy(), expected)


def test_shapes_that_do_not_fit_blocks_are_refused(tmp_path):
    assert gguf_file.fits_blocks((8, 512), "q4_k") and not gguf_file.fits_blocks((8, 320), "q4_k")
    assert gguf_file.fits_blocks((8, 320), "q8_0") and not gguf_file.fits_blocks((320,), "q8_0")
    with pytest.raises(WeightshopError, match="multiple of 256"):
        gguf_file.quantize(torch.randn(8, 320), "q4_k")
    with pytest.raises(WeightshopError, match="unknown GGUF type 'q5_k'"):
        gguf_file.quantize(torch.randn(8, 256), "q5_k")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(WeightshopError, match="bad.gguf is not a readable GGUF file"):
        gguf_file.read_gguf(tmp_path / "bad.gguf")
