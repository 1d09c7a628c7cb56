"""The nano text encoder: a tiny Qwen3VLModel with a locally trained tokenizer, pretrained as a language model.

Krea 2 conditions on hidden states tapped from a pretrained Qwen3-VL. The nano stand-in is pretrained
the same way a real encoder is (next-token prediction) on world captions wrapped in Krea's prompt
template, so its hidden states carry word identity and context. Its vocabulary and language know the
held-out words ("star", "striped"), as a real encoder knows every word: only the diffusion transformer
never sees them, which is what a LoRA then has to teach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weightshop.models.tokenizer import PROMPT_PREFIX, PROMPT_SUFFIX, train_krea2_tokenizer
from weightshop.nano import world
from weightshop.state import run_loop, warmup_cosine


@dataclass(frozen=True)
class TextRecipe:
    vocab_size: int = 1024
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    select_layers: tuple[int, ...] = (1, 2, 3, 4)
    max_sequence_length: int = 32  # caption tokens + the 5 suffix tokens the pipeline keeps
    corpus_scenes: int = 6000
    steps: int = 800
    batch: int = 64
    lr: float = 2e-3
    seed: int = 0
    save_every_s: float = 120.0


def caption_corpus(n: int, seed: int = 0) -> list[str]:
    """Captions of base scenes and, for a fifth, of held-out-concept scenes (the encoder knows every word)."""
    rng = np.random.default_rng([seed, 7])
    corpus = []
    for i in range(n):
        heldout = world.HELDOUT_CONCEPTS[i % len(world.HELDOUT_CONCEPTS)] if i % 5 == 0 else None
        scene = world.sample_scene(rng, heldout=heldout)
        corpus.extend(world.captions(scene, rng))
    return corpus


def build_tokenizer(recipe: TextRecipe = TextRecipe()):
    return train_krea2_tokenizer(caption_corpus(recipe.corpus_scenes // 4, recipe.seed), recipe.vocab_size)


def build_text_encoder(vocab_size: int, recipe: TextRecipe = TextRecipe()):
    from transformers import Qwen3VLConfig, Qwen3VLModel

    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=recipe.hidden, intermediate_size=2 * recipe.hidden,
            num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
            num_key_value_heads=recipe.kv_heads, head_dim=recipe.hidden // recipe.heads,
            max_position_embeddings=512, tie_word_embeddings=True,
            rope_scaling={"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2,
                           out_hidden_size=recipe.hidden, deepstack_visual_indexes=[]),
    )
    return Qwen3VLModel(config)


def lm_loss(encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    """Next-token loss with logits from the tied input embedding (Qwen3VLModel has no LM head)."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    mask = batch.attention_mask.bool()
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0).unsqueeze(0).expand(3, -1, -1)
    hidden = encoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions).last_hidden_state
    logits = hidden[:, :-1] @ encoder.get_input_embeddings().weight.T
    targets = batch.input_ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def train_text_encoder(workdir: Path, tokenizer, recipe: TextRecipe = TextRecipe(), max_steps: int | None = None,
                       progress: Callable[[str, int, int, dict], None] | None = None):
    torch.manual_seed(recipe.seed)
    encoder = build_text_encoder(len(tokenizer), recipe)
    opt = torch.optim.AdamW(encoder.parameters(), lr=recipe.lr, weight_decay=0.01)
    corpus = caption_corpus(recipe.corpus_scenes, recipe.seed + 1)

    def step_loss(step: int):
        rng = np.random.default_rng([recipe.seed, step])  # per-step data: exact resume
        texts = [PROMPT_PREFIX + corpus[i] + PROMPT_SUFFIX for i in rng.integers(len(corpus), size=recipe.batch)]
        return lm_loss(encoder, tokenizer, texts), {}

    encoder.train()
    info = run_loop("text", workdir / "text_state", {"text_encoder": encoder}, opt, recipe.steps, recipe.lr,
                    lambda step: warmup_cosine(step, recipe.steps, 50), step_loss, max_steps=max_steps,
                    progress=progress, save_every_s=recipe.save_every_s)
    return encoder.eval(), info
