"""The FLOP model against hand counts: krea2-nano's config term by term, and full size against PEERS.md's range."""

import pytest

from weightshop.models import flops

NANO = {"in_channels": 32, "num_layers": 6, "attention_head_dim": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 768, "timestep_embed_dim": 128, "text_hidden_dim": 64,
        "num_text_layers": 4, "text_num_attention_heads": 4, "text_num_key_value_heads": 4,
        "text_intermediate_size": 128, "num_layerwise_text_blocks": 2, "num_refiner_text_blocks": 2}
# Hand count, krea2-nano at 64 px (8 x 8 = 64 image tokens) with 32 text tokens: 96 tokens through 6 blocks.
# block weights per token: q 256*256, k+v 2*256*128, gate 256*256, out 256*256, SwiGLU 3*256*768 = 851,968
NANO_BLOCKS = 2 * 96 * 6 * 851_968
NANO_ATTENTION = 4 * 96 * 96 * 256 * 6
# text fusion block weights: q, k, v, gate, out 5*64*64 + SwiGLU 3*64*128 = 45,056
NANO_TEXT = (2 * (2 * 32 * 4 * 45_056 + 4 * 32 * 4 * 4 * 64)  # layer-wise: 128 rows, sequences of 4 taps
             + 2 * 32 * 64 * 4  # projector: 4 taps -> 1
             + 2 * (2 * 32 * 45_056 + 4 * 32 * 32 * 64)  # refiner over the 32 tokens
             + 2 * 32 * (64 * 256 + 256 * 256))  # txt_in
NANO_OTHER = 2 * (128 * 256 + 256 * 256 + 256 * 1536) + 2 * 2 * 64 * 32 * 256  # time MLP + modulation, img_in, final
NANO_FORWARD = NANO_BLOCKS + NANO_ATTENTION + NANO_TEXT + NANO_OTHER  # 1,076,051,968


def test_nano_forward_equals_the_hand_count():
    f = flops.forward_flops(NANO, image_tokens=64, text_tokens=32)
    assert (f.blocks, f.attention, f.text, f.other) == (NANO_BLOCKS, NANO_ATTENTION, NANO_TEXT, NANO_OTHER)
    assert f.total == NANO_FORWARD == 1_076_051_968
    assert f.per_step == f.total - NANO_TEXT
    assert flops.forward_flops(NANO, 64, 32, batch=3).total == 3 * NANO_FORWARD
    assert flops.generation_flops(NANO, 64, 32, steps=8, guided=False) == 8 * NANO_FORWARD
    assert flops.generation_flops(NANO, 64, 32, steps=2, guided=True) == 4 * NANO_FORWARD


def test_block_linears_match_the_real_modules():
    """The blocks' Linear count equals the weights of the Linears a meta-device model really has."""
    from weightshop.models.memory import weight_counts

    counts = weight_counts({**NANO, "axes_dims_rope": [16, 24, 24]})
    assert flops.forward_flops(NANO, 64, 32).blocks == 2 * 96 * sum(counts.block_linear_weights)


def test_full_size_lands_in_the_published_range():
    from weightshop.models.shape import full_size_shape

    config = full_size_shape().config
    padded = flops.forward_flops(config, 4096, 512)
    # hand count of the blocks: 4608 tokens, 28 x (q, gate, out 6144^2; k, v 6144*1536; SwiGLU 3*6144*16384)
    assert padded.blocks == 2 * 4608 * 28 * (3 * 6144**2 + 2 * 6144 * 1536 + 3 * 6144 * 16384)
    assert padded.attention == 4 * 4608**2 * 6144 * 28
    assert 128.5e12 < padded.total < 129.5e12  # PEERS.md: ~129 TFLOP with 512 text tokens
    trimmed = flops.forward_flops(config, 4096, 64).total
    assert 113e12 <= trimmed < 114e12  # ~113 with the padding trimmed
    assert 0.10 < 1 - trimmed / padded.total < 0.14  # the "about 12 % fewer FLOPs"


def test_training_step_and_mfu():
    assert flops.training_step_flops(NANO, 64, 32) == 3 * NANO_FORWARD
    assert flops.training_step_flops(NANO, 64, 32, checkpointing=False) == 2 * NANO_FORWARD
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and flops.peak_tflops("NVIDIA H100", fp8=True) == 1979.0
    assert flops.peak_tflops("NVIDIA H100 PCIe") == 756.0 and flops.peak_tflops("NVIDIA H100 NVL", fp8=True) == 1671.0
    assert flops.peak_tflops("cpu") is None and flops.mfu(1e12, 1.0, "cpu") is None
    assert flops.mfu(756e12 / 2, 1.0, "NVIDIA H100 PCIe") == pytest.approx(0.5)
