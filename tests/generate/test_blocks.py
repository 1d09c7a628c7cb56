"""generate.blocks: the block as one function is bit-identical to the module, LoRA layers included, and steps aside
wherever the module call would do something the function cannot see (hooks, compile, another processor)."""

import pytest
import torch

from weightshop.generate.blocks import PreparedBlock, plain, prepare, run_block
from weightshop.models.tiny import tiny_transformer


@pytest.fixture
def transformer():
    torch.manual_seed(0)
    model = tiny_transformer().eval()
    with torch.no_grad():  # the tiny model's tables start at zero: give the modulation something to do
        for block in model.transformer_blocks:
            block.scale_shift_table.normal_(0, 0.5)
            block.norm1.weight.normal_(0, 0.3)
            block.norm2.weight.normal_(0, 0.3)
    return model


def inputs(transformer, batch=2, text=5, image=16, masked=True):
    block = transformer.transformer_blocks[0]
    hidden_size = block.norm1.dim
    torch.manual_seed(1)
    hidden = torch.randn(batch, text + image, hidden_size)
    temb = torch.randn(batch, 1, 6 * hidden_size)
    head_dim = block.attn.head_dim
    angles = torch.rand(text + image, head_dim) * 6.28
    rope = (angles.cos(), angles.sin())
    mask = None
    if masked:
        mask = torch.ones(batch, text + image, dtype=torch.bool)
        mask[0, 3:text] = False  # the first row's text is padded
        mask = mask[:, None, None, :]
    return hidden, temb, rope, mask


@pytest.mark.parametrize("masked", [True, False])
def test_run_block_is_bit_identical_to_the_module(transformer, masked):
    hidden, temb, rope, mask = inputs(transformer, masked=masked)
    prepared = prepare(transformer.transformer_blocks)
    assert all(isinstance(p, PreparedBlock) for p in prepared)
    with torch.no_grad():
        for block, fast in zip(transformer.transformer_blocks, prepared):
            expected = block(hidden, temb, rope, mask)
            got = run_block(fast, hidden, temb, rope, mask)
            assert torch.equal(got, expected)
            assert not torch.equal(got, hidden)
            hidden = expected


def test_lora_layers_still_run_inside_the_function(transformer):
    from peft import LoraConfig

    hidden, temb, rope, mask = inputs(transformer)
    with torch.no_grad():
        before = transformer.transformer_blocks[0](hidden, temb, rope, mask)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v", "ff.up"],
                                       init_lora_weights=False))
    block = transformer.transformer_blocks[0]
    assert plain(block)
    with torch.no_grad():
        expected = block(hidden, temb, rope, mask)
        got = run_block(prepare([block])[0], hidden, temb, rope, mask)
    assert torch.equal(got, expected)
    assert (got - before).abs().max() > 1e-4  # the LoRA moved the output, in both


def test_hooks_compile_and_other_processors_keep_the_module_call(transformer):
    from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor

    blocks = transformer.transformer_blocks
    hidden, temb, rope, mask = inputs(transformer)
    seen = []
    handle = blocks[0].attn.register_forward_hook(lambda *_: seen.append("attn"))
    assert not plain(blocks[0])
    prepared = prepare(blocks)
    assert prepared[0] is blocks[0] and isinstance(prepared[1], PreparedBlock)
    with torch.no_grad():
        run_block(prepared[0], hidden, temb, rope, mask)
    assert seen == ["attn"]  # the module ran, hook and all
    handle.remove()
    assert plain(blocks[0])

    class Traced(Krea2AttnProcessor):
        pass

    blocks[1].attn.set_processor(Traced())
    assert not plain(blocks[1])
    blocks[1].attn.set_processor(Krea2AttnProcessor())
    assert plain(blocks[1])

    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    add_hook_to_module(blocks[1].ff, ModelHook())  # accelerate (and diffusers' registry) replace `forward` instead
    assert not plain(blocks[1])
    remove_hook_from_module(blocks[1].ff)
    assert plain(blocks[1])
    blocks[1].compile()  # regional compile marks the module; its compiled graph must be what runs
    assert not plain(blocks[1])
