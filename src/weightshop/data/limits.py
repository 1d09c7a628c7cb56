"""What a training set must fit for a given model: bucket multiple, area, caption token budget, tokenizer."""

from __future__ import annotations

from pathlib import Path


def model_limits(model: str | None) -> dict:
    """Bucket multiple, default area, caption token budget and tokenizer of the model the set is for.

    Without a model: Krea 2's (multiple 16, 1024 x 1024, 507 caption tokens, words counted approximately).
    """
    from weightshop.data import KREA2_CAPTION_TOKENS
    from weightshop.models.spec import KREA2

    if model is None:
        return {"multiple": KREA2.size_multiple(), "area": KREA2.default_size ** 2, "max_tokens": KREA2_CAPTION_TOKENS,
                "tokenizer": None}
    from transformers import AutoTokenizer

    from weightshop.models.info import describe
    from weightshop.models.tokenizer import SUFFIX_TOKENS

    info = describe(model)
    side = info["default_size"]
    return {"multiple": info["size_multiple"], "area": side * side,
            "max_tokens": info["max_sequence_length"] - SUFFIX_TOKENS,
            "tokenizer": AutoTokenizer.from_pretrained(Path(info["components"]) / "tokenizer")}
