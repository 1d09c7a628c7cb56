"""A Krea 2-layout tokenizer trained locally, for the offline test components and krea2-nano.

The real Krea 2 tokenizer is Qwen3-VL's byte-level BPE. Its prompt template tokenizes to a 34-token
system prefix (dropped after encoding) and a 5-token suffix appended after the padding; the pipeline
relies on both counts. A byte-level BPE trained here on the template plus a caption corpus, wrapped in
transformers' Qwen2 tokenizer class with the chat special tokens, reproduces that layout exactly, so the
same Krea2Pipeline code path runs with no download.
"""

from __future__ import annotations

from collections.abc import Iterable

from weightshop.errors import WeightshopError

# The template Krea2Pipeline wraps every prompt in (diffusers 0.42.1, pipeline_krea2.py).
PROMPT_PREFIX = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
PREFIX_TOKENS = 34
SUFFIX_TOKENS = 5
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def train_krea2_tokenizer(corpus: Iterable[str], vocab_size: int = 1024):
    """Train a byte-level BPE on corpus and wrap it as a Qwen2 tokenizer with Krea 2's template layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The template is repeated so that each of its words becomes one token, as in Qwen's vocabulary.
    template = [PROMPT_PREFIX + PROMPT_SUFFIX] * 64
    bpe.train_from_iterator([*template, *corpus], trainer)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=bpe,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token=None,
        bos_token=None,
    )
    check_template_layout(tokenizer)
    return tokenizer


def check_template_layout(tokenizer) -> None:
    """Raise unless the tokenizer splits the template as Krea2Pipeline expects (34 + 5 tokens)."""
    prefix = len(tokenizer(PROMPT_PREFIX).input_ids)
    suffix = len(tokenizer(PROMPT_SUFFIX).input_ids)
    if (prefix, suffix) != (PREFIX_TOKENS, SUFFIX_TOKENS):
        raise WeightshopError(
            f"tokenizer splits Krea 2's prompt template into {prefix} + {suffix} tokens; the pipeline needs "
            f"{PREFIX_TOKENS} + {SUFFIX_TOKENS} (train it with a larger vocabulary or on the template)"
        )
