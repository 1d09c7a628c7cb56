"""The original <-> diffusers weight-name map, checked against diffusers' own converter; the tokenizer layout."""

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_krea2_transformer_checkpoint_to_diffusers

from weightshop.errors import WeightshopError
from weightshop.models.keys import (
    diffusers_to_original,
    diffusers_to_original_key,
    is_diffusers_layout,
    is_original_layout,
    original_to_diffusers,
)
from weightshop.models.tiny import tiny_transformer
from weightshop.models.tokenizer import PROMPT_PREFIX, PROMPT_SUFFIX, check_template_layout, train_krea2_tokenizer


def test_round_trip_matches_diffusers_converter():
    state = tiny_transformer().state_dict()
    original = diffusers_to_original(state)
    assert is_original_layout(original) and not is_diffusers_layout(original)
    theirs = convert_krea2_transformer_checkpoint_to_diffusers(dict(original))
    ours = original_to_diffusers(original)
    assert set(theirs) == set(ours) == set(state)
    for key in state:
        assert torch.equal(theirs[key], state[key]) and torch.equal(ours[key], state[key])


@pytest.mark.parametrize("diffusers_key, original_key", [
    ("transformer_blocks.3.attn.to_q.weight", "blocks.3.attn.wq.weight"),
    ("transformer_blocks.0.attn.to_out.0.weight", "blocks.0.attn.wo.weight"),
    ("transformer_blocks.0.attn.to_gate.weight", "blocks.0.attn.gate.weight"),
    ("transformer_blocks.1.ff.down.weight", "blocks.1.mlp.down.weight"),
    ("transformer_blocks.1.attn.norm_q.weight", "blocks.1.attn.qknorm.qnorm.scale"),
    ("img_in.weight", "first.weight"),
    ("final_layer.linear.bias", "last.linear.bias"),
    ("time_mod_proj.weight", "tproj.1.weight"),
    ("txt_in.linear_2.weight", "txtmlp.3.weight"),
    ("text_fusion.refiner_blocks.0.ff.gate.weight", "txtfusion.refiner_blocks.0.mlp.gate.weight"),
])
def test_known_names(diffusers_key, original_key):
    assert diffusers_to_original_key(diffusers_key) == original_key


def test_block_modulation_is_flat_in_the_original_layout():
    state = tiny_transformer().state_dict()
    original = diffusers_to_original(state)
    assert original["blocks.0.mod.lin"].ndim == 1
    assert original_to_diffusers(original)["transformer_blocks.0.scale_shift_table"].shape == (6, 32)


def test_tokenizer_reproduces_the_template_layout(tiny_tokenizer):
    assert len(tiny_tokenizer(PROMPT_PREFIX).input_ids) == 34
    assert len(tiny_tokenizer(PROMPT_SUFFIX).input_ids) == 5
    ids = tiny_tokenizer(PROMPT_PREFIX + "a red circle", padding="max_length", max_length=40).input_ids
    assert ids[-1] == tiny_tokenizer.pad_token_id


def test_layout_check_rejects_a_tokenizer_that_splits_the_template():
    from transformers import Qwen2Tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers

    bpe = Tokenizer(models.BPE(vocab={"<|endoftext|>": 0}, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bad = Qwen2Tokenizer(tokenizer_object=bpe, pad_token="<|endoftext|>", unk_token=None, bos_token=None)
    with pytest.raises(WeightshopError, match="34 \\+ 5"):
        check_template_layout(bad)
    assert train_krea2_tokenizer(["a big dog"], vocab_size=500) is not None
