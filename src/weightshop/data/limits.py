"""What a training set must fit for a given model: bucket multiple, area, caption token budget, tokenizer."""

from __future__ import annotations

from pathlib import Path


def model_limits(model: str | None) -> dict:
    """Bucket multiple, default area, caption token budget and tokenizer of the model the set is for.

    Without a model: Krea 2's (multiple 16, 1024 x 1024, 507 caption tokens, words counted approximately).
    """
    from weightshop.data import KREA2_CAPTION_TOKENS

    if model is None:
        return {"multiple": 16, "area": 1024 * 1024, "max_tokens": KREA2_CAPTION_TOKENS, "tokenizer": None}
    from transformers import AutoTokenizer

    from weightshop.models.info import describe
    from weightshop.models.tokenizer import SUFFIX_TOKENS

    info = describe(model)
    side = info["default_size"]
    max_len = int(info["manifest"].get("max_sequence_length", 512))
    return {"multiple": info["size_multiple"], "area": side * side, "max_tokens": max_len - SUFFIX_TOKENS,
            "tokenizer": AutoTokenizer.from_pretrained(Path(info["components"]) / "tokenizer")}
