"""The nano text encoder: a tiny Qwen3VLModel with a locally trained tokenizer, trained to read out the scene.

Krea 2 conditions on hidden states tapped from a pretrained Qwen3-VL, whose features say which words go together
("blue" with "square", the square on the right). Krea2Transformer2DModel puts every text token at rotary position 0
and its text fusion blocks have no positions, so word order reaches the image only through those features. The nano
stand-in gets the same property from a supervised readout: with its embeddings frozen at their seeded init (so
words stay apart), its layers learn to make the template's suffix tokens, which see the whole caption, predict the
scene by spatial slot (left or upper object first: shape, colour, size; fill, background, layout) through linear
heads that are then thrown away. Its vocabulary knows the held-out words ("star", "striped"), as a real encoder
knows every word: only the diffusion transformer never sees them, which is what a LoRA then has to teach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weightshop.models.loading import text_pipeline
from weightshop.models.tokenizer import (PREFIX_TOKENS, PROMPT_PREFIX, PROMPT_SUFFIX, SUFFIX_TOKENS,
                                         train_krea2_tokenizer)
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
    # Readout steps (`train_text_encoder`), about a minute. Why a readout: next-token training on shapes-world
    # captions, where every colour (and shape) is equally likely in every context, collapses interchangeable words,
    # and a random init keeps words apart but does not bind them to their object; a real Qwen3-VL's features do
    # both, and the readout puts both there directly (the measurements: README, "krea2-nano").
    steps: int = 600


def scene_captions(n: int, seed: int) -> list:
    """(scene, caption) pairs: base scenes and, for a fifth, held-out-concept scenes (the encoder knows every word)."""
    rng = np.random.default_rng([seed, 7])
    pairs = []
    for i in range(n):
        heldout = world.HELDOUT_CONCEPTS[i % len(world.HELDOUT_CONCEPTS)] if i % 5 == 0 else None
        scene = world.sample_scene(rng, heldout=heldout)
        pairs.extend((scene, c) for c in world.captions(scene, rng))
    return pairs


def caption_corpus(n: int, seed: int = 0) -> list[str]:
    """The captions of `scene_captions(n, seed)` (the tokenizer's training text)."""
    return [c for _, c in scene_captions(n, seed)]


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


# The readout's targets: each scene described by spatial slot (the left or upper object first, as an image reads),
# so the words the caption binds to each object end up tied to where that object is drawn.
READOUT = {
    "shape1": world.SHAPES + world.HELDOUT_SHAPES, "colour1": tuple(world.COLOURS), "size1": world.SIZES,
    "fill": world.FILLS + world.HELDOUT_FILLS,
    "shape2": (world.NONE,) + world.SHAPES + world.HELDOUT_SHAPES, "colour2": (world.NONE,) + tuple(world.COLOURS),
    "size2": (world.NONE,) + world.SIZES,
    "background": tuple(world.BACKGROUNDS), "layout": world.POSITIONS + ("horizontal", "vertical"),
}


def readout_targets(scene) -> dict[str, int]:
    """Class indices of READOUT for one scene: objects ordered left-to-right or top-to-bottom, not as captioned."""
    objects = list(scene.objects)
    if len(objects) == 2 and scene.relation in ("right of", "below"):
        objects.reverse()
    first, second = objects[0], (objects[1] if len(objects) == 2 else None)
    values = {
        "shape1": first.shape, "colour1": first.colour, "size1": first.size, "fill": first.fill,
        "shape2": second.shape if second else world.NONE, "colour2": second.colour if second else world.NONE,
        "size2": second.size if second else world.NONE, "background": scene.background,
        "layout": scene.position if second is None else
        ("horizontal" if scene.relation in ("left of", "right of") else "vertical"),
    }
    return {k: READOUT[k].index(v) for k, v in values.items()}


class Readout(torch.nn.Module):
    """Linear heads reading the scene (READOUT) off the last tapped layer at the suffix tokens; discarded after training."""

    def __init__(self, hidden: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden, len(v)) for k, v in READOUT.items()})

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: head(features) for k, head in self.heads.items()}


def readout_loss(text_pipe, readout: Readout, scenes: list, captions: list[str],
                 max_sequence_length: int) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of every READOUT head at each of the 5 suffix tokens of the last tapped layer, and the heads'
    accuracy. `text_pipe` (models.loading.text_pipeline) encodes exactly as Krea2Pipeline will at sampling time."""
    hidden, _ = text_pipe.get_text_hidden_states(captions, max_sequence_length, torch.device("cpu"))
    features = hidden[:, -SUFFIX_TOKENS:, -1]  # (B, 5, hidden)
    targets = [readout_targets(s) for s in scenes]
    losses, correct = [], []
    for key, logits in readout(features).items():
        t = torch.tensor([x[key] for x in targets]).repeat_interleave(SUFFIX_TOKENS)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        losses.append(F.cross_entropy(flat, t))
        correct.append((flat.argmax(-1) == t).float().mean())
    return torch.stack(losses).mean(), {"readout_accuracy": float(torch.stack(correct).mean())}


def train_text_encoder(workdir: Path, tokenizer, recipe: TextRecipe = TextRecipe(), max_steps: int | None = None,
                       progress: Callable[[str, int, int, dict], None] | None = None):
    """Train the encoder (its embeddings stay at their seeded init) so the suffix tokens read out the scene by
    spatial slot; returns the encoder and the run info, with `heldout_readout_accuracy` on the captions of scenes drawn
    with another seed."""
    torch.manual_seed(recipe.seed)
    encoder = build_text_encoder(len(tokenizer), recipe)
    encoder.get_input_embeddings().requires_grad_(False)
    text_pipe = text_pipeline(encoder, tokenizer, recipe.select_layers)
    readout = Readout(recipe.hidden)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(readout.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    corpus = scene_captions(recipe.corpus_scenes, recipe.seed + 1)

    def step_loss(step: int):
        rng = np.random.default_rng([recipe.seed, step])  # per-step data: exact resume
        batch = [corpus[i] for i in rng.integers(len(corpus), size=recipe.batch)]
        return readout_loss(text_pipe, readout, [s for s, _ in batch], [c for _, c in batch],
                            recipe.max_sequence_length)

    encoder.train()
    info = run_loop("text", workdir / "text_state", {"text_encoder": encoder, "readout": readout}, opt, recipe.steps,
                    recipe.lr, lambda step: warmup_cosine(step, recipe.steps, 50), step_loss, max_steps=max_steps,
                    progress=progress, save_every_s=recipe.save_every_s)
    encoder.eval()
    if recipe.steps:
        held = scene_captions(200, recipe.seed + 2)
        with torch.no_grad():
            _, metrics = readout_loss(text_pipe, readout, [s for s, _ in held], [c for _, c in held],
                                      recipe.max_sequence_length)
        info["heldout_readout_accuracy"] = metrics["readout_accuracy"]
    return encoder, info


def word_separation(encoder, tokenizer, select_layers, template: str = "a large solid {} circle in the middle, black background",
                    words: tuple[str, str] = ("red", "blue")) -> float:
    """How far the tapped features of two captions that differ in one word lie apart, relative to their norm
    (the pipeline's layout: template-wrapped, prefix dropped). A text encoder whose features barely move
    (about 0.03, as next-token training on this world leaves them) leaves the transformer almost nothing to
    condition on."""
    texts = [PROMPT_PREFIX + template.format(w) + PROMPT_SUFFIX for w in words]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask.bool(), output_hidden_states=True)
    taps = torch.stack([out.hidden_states[i] for i in select_layers], dim=2)[:, PREFIX_TOKENS:]  # the system-prefix tokens
    return float((taps[0] - taps[1]).norm() / taps[0].norm())
