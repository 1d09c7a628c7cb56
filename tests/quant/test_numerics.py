"""Every format's error bound holds, on random weights and on the adversarial ones: all zeros, one huge outlier,
float32 subnormals, and a row of a single sign."""

import pytest
import torch

from weightshop.quant import gguf_file
from weightshop.quant.numerics import (
    INT8_MAX,
    fp8_dequantize,
    fp8_error_bound,
    fp8_quantize,
    int8_dequantize,
    int8_error_bound,
    int8_quantize,
    q4_0_error_bound,
    q4_k_error_bound,
    q8_0_error_bound,
    relative_error,
)


def _cases():
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(16, 512, generator=g)
    outlier = rand.clone()
    outlier[3, 17] = 1e4
    outlier[9, 300] = -3e3
    sub = torch.randn(4, 512, generator=g) * 1e-40  # float32 subnormals
    mixed = torch.cat([torch.randn(2, 512, generator=g) * 1e-3, torch.randn(2, 512, generator=g) * 10])
    one_sign = torch.rand(4, 512, generator=g) + 0.5
    return {"random": rand, "zeros": torch.zeros(4, 512), "outlier": outlier, "subnormal": sub, "mixed": mixed,
            "one_sign": one_sign, "bf16": rand.bfloat16()}


CASES = _cases()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_fp8_within_bound(case, per_channel):
    w = CASES[case]
    q, scale = fp8_quantize(w, per_channel)
    assert q.dtype == torch.float8_e4m3fn and torch.isfinite(q.float()).all()
    err = (fp8_dequantize(q, scale) - w.float()).abs()
    assert (err <= fp8_error_bound(w, scale)).all()


@pytest.mark.parametrize("case", CASES)
def test_int8_within_bound_and_symmetric(case):
    w = CASES[case]
    q, scale = int8_quantize(w)
    assert q.dtype == torch.int8 and q.abs().max() <= INT8_MAX
    err = (int8_dequantize(q, scale) - w.float()).abs()
    # half a step, plus float32's rounding of the product q * scale (|q| <= 127)
    assert (err <= int8_error_bound(scale) + INT8_MAX * 2.0 ** -24 * scale).all()


BOUNDS = {"q8_0": q8_0_error_bound, "q4_0": q4_0_error_bound, "q4_k": q4_k_error_bound}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("numeric", BOUNDS)
def test_gguf_blocks_within_bound(case, numeric):
    w = CASES[case].float()
    # subnormal blocks: gguf-py's 1/d overflows (a numpy warning) and d flushes to 0 in fp16: all weights read 0,
    # which the bounds' fp16-subnormal term covers
    blocks = gguf_file.quantize(w, numeric)
    stored = gguf_file.GGUFTensor("w", gguf_file.GGUF_TYPES[numeric], tuple(w.shape), blocks)
    err = (gguf_file.dequantize(stored) - w).abs()
    assert torch.isfinite(err).all()
    assert (err <= BOUNDS[numeric](w)).all()


def test_relative_errors_rank_the_formats():
    """On Gaussian weights: int8 per channel < fp8 < Q4_K < Q4_0 (and exact copies score 0)."""
    w = CASES["random"]
    errors = {"int8": relative_error(w, int8_dequantize(*int8_quantize(w))),
              "fp8": relative_error(w, fp8_dequantize(*fp8_quantize(w)))}
    for numeric in ("q8_0", "q4_0", "q4_k"):
        t = gguf_file.GGUFTensor("w", gguf_file.GGUF_TYPES[numeric], tuple(w.shape), gguf_file.quantize(w, numeric))
        errors[numeric] = relative_error(w, gguf_file.dequantize(t))
    assert errors["q8_0"] < errors["int8"] < errors["fp8"] < errors["q4_k"] < errors["q4_0"] < 0.12
    assert relative_error(w, w) == 0 and relative_error(torch.zeros(3), torch.zeros(3)) == 0
