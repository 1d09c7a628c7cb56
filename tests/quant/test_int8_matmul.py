"""int8 matmuls (`Int8MatmulLinear`): torch._int_mm runs on CPU in this torch, so the product is checked here
against the fp32 matmul within the two roundings' bound; shapes and devices the kernel refuses fall back."""

import pytest
import torch

from weightshop.quant.formats import get_format
from weightshop.quant.layers import LINEAR_TYPES, Int8Linear, Int8MatmulLinear, int8_mm_refusal, int8_rows


def linear(in_features=64, out_features=48, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features)


def test_int8_matmul_within_the_rounding_bound_of_the_fp32_product():
    reference = linear()
    x = torch.randn(3, 20, 64)
    expected = reference(x)
    w = reference.weight.detach().clone()
    layer = LINEAR_TYPES["int8-mm"](reference, torch.float32)
    assert isinstance(layer, Int8MatmulLinear) and layer.weight.dtype == torch.int8
    assert layer.fallback_reason(x) is None  # the CPU kernel takes any shape
    got = layer(x)
    # Each product x_k w_k is computed as (x_k + dx)(w_k + dw) with |dx| <= s_x / 2 (per token) and |dw| <= s_w / 2
    # (per channel): |error| <= sum_k |x_k| s_w / 2 + |w_k| s_x / 2 + s_x s_w / 4, plus fp32 rounding.
    rows = x.reshape(-1, 64)
    _, s_x = int8_rows(rows)
    s_w = layer.weight_scale.reshape(1, -1)
    bound = (rows.abs().sum(1, keepdim=True) * s_w / 2 + s_x * w.abs().sum(1).reshape(1, -1) / 2
             + 64 * s_x * s_w / 4) + 1e-5
    assert ((got - expected).reshape(-1, 48).abs() <= bound).all()
    assert ((got - expected).norm() / expected.norm()).item() < 0.02  # about 1 % on Gaussian data
    # against the weight-only int8 layer (same weight): only the activations' rounding differs
    weight_only = Int8Linear.convert(linear(), torch.float32)(x)
    assert ((got - weight_only).norm() / weight_only.norm()).item() < 0.02


def test_int8_matmul_falls_back_where_the_kernel_refuses():
    assert int8_mm_refusal(8, 64, 64, "cuda") and "16" in int8_mm_refusal(8, 64, 64, "cuda")
    assert "multiples of 8" in int8_mm_refusal(32, 60, 64, "cuda")
    assert int8_mm_refusal(32, 64, 64, "cuda") is None and int8_mm_refusal(1, 3, 5, "cpu") is None
    assert "mps" in int8_mm_refusal(32, 64, 64, "mps")
    layer = Int8MatmulLinear.convert(linear(), torch.float32)
    x = torch.randn(4, 64)
    weight_only = Int8Linear.forward(layer, x)
    with pytest.MonkeyPatch.context() as mp:  # a refused shape computes the weight-only product instead
        mp.setattr(Int8MatmulLinear, "fallback_reason", lambda self, x: "refused")
        assert torch.equal(layer(x), weight_only)


def test_int8_mm_is_an_in_memory_format():
    fmt = get_format("int8-mm")
    assert not fmt.is_file and fmt.numeric == "int8" and fmt.per_channel
