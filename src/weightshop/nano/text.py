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
    batch: int = 64
    lr: float = 2e-3
    seed: int = 0
    save_every_s: float = 120.0
    # Next-token (LM) steps. 0: the encoder keeps its seeded random init. In shapes-world captions every colour (and every
    # shape) is equally likely in every context, so next-token training has no reason to keep their
    # representations apart and collapses them: after the first build's 800 steps, red vs blue moved the tapped
    # features by 2.6 % of their norm (a random init: 25 %), and nano-Raw could not learn colour. Freezing the
    # embeddings during LM training only reached 4.4 %. See word_separation and its test.
    steps: int = 0


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


def word_separation(encoder, tokenizer, select_layers, template: str = "a large solid {} circle in the middle, black background",
                    words: tuple[str, str] = ("red", "blue")) -> float:
    """How far the tapped features of two captions that differ in one word lie apart, relative to their norm
    (the pipeline's layout: template-wrapped, prefix dropped). A text encoder whose features barely move
    (the first build: 0.026) leaves the transformer almost nothing to condition on."""
    texts = [PROMPT_PREFIX + template.format(w) + PROMPT_SUFFIX for w in words]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask.bool(), output_hidden_states=True)
    taps = torch.stack([out.hidden_states[i] for i in select_layers], dim=2)[:, 34:]  # the 34 system-prefix tokens
    return float((taps[0] - taps[1]).norm() / taps[0].norm())
