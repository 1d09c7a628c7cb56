"""The probe: a small CNN that reads a shapes-world image back into its attributes.

It is krea2-nano's offline judge: prompt adherence (do the generated attributes match the prompt?) and
concept presence (is there a star? are the fills striped?). It is trained on renders of every concept,
held-out ones included, with augmentations that imitate generation artefacts (VAE round trips, blur,
noise, slight colour shifts), and reports its own accuracy on clean renders.

Two-object scenes are labelled in canonical order (left object first for left/right, top object first
for above/below): "a red circle left of a blue square" and "a blue square right of a red circle" are the
same picture, so only the canonical reading can be predicted from pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from weightshop.nano import world
from weightshop.state import run_loop, warmup_cosine

ATTRIBUTES = tuple(world.ATTRIBUTE_VALUES)
_FLIP = {"right of": "left of", "below": "above"}


def canonical(scene: world.Scene) -> world.Scene:
    """The reading of a scene the pixels determine: relations 'right of'/'below' become 'left of'/'above'."""
    if scene.relation in _FLIP:
        return replace(scene, objects=scene.objects[::-1], relation=_FLIP[scene.relation])
    return scene


def labels(scene: world.Scene) -> dict[str, str]:
    return world.attributes(canonical(scene))


class Probe(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        w = width
        self.features = nn.Sequential(
            block(5, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1), block(2 * w, 4 * w, 2),
            block(4 * w, 4 * w, 1), block(4 * w, 4 * w, 2), block(4 * w, 4 * w, 2),
        )
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in world.ATTRIBUTE_VALUES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 64, 64) in [-1, 1]; coordinate channels let it judge positions."""
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(b, 1, h, w)
        feats = self.trunk(self.features(torch.cat([x, ys, xs], 1)))
        return {k: head(feats) for k, head in self.heads.items()}


def to_tensor(images) -> torch.Tensor:
    """PIL images or HxWx3 uint8 arrays -> (B, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def label_tensor(scenes) -> dict[str, torch.Tensor]:
    rows = [labels(s) for s in scenes]
    return {k: torch.tensor([world.ATTRIBUTE_VALUES[k].index(r[k]) for r in rows]) for k in ATTRIBUTES}


def sample_scenes(rng: np.random.Generator, n: int, heldout_fraction: float = 0.3) -> list:
    scenes = []
    for _ in range(n):
        heldout = None
        if rng.random() < heldout_fraction:
            heldout = world.HELDOUT_CONCEPTS[int(rng.integers(len(world.HELDOUT_CONCEPTS)))]
        scenes.append(world.sample_scene(rng, heldout=heldout))
    return scenes


def augment(x: torch.Tensor, gen: torch.Generator, vae=None) -> torch.Tensor:
    """Imitate generation artefacts: VAE round trip, blur, noise, brightness/colour shifts."""
    b = x.shape[0]
    if vae is not None:
        with torch.no_grad():
            k = b // 4
            x = x.clone()
            x[:k] = vae.decode(vae.encode(x[:k].unsqueeze(2)).latent_dist.mode()).sample[:, :, 0].clamp(-1, 1)
    blur = torch.rand(b, generator=gen) < 0.3
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    scale = 1 + 0.08 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
    shift = 0.08 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
    noise = torch.randn(x.shape, generator=gen) * 0.06 * torch.rand(b, 1, 1, 1, generator=gen)
    return (x * scale + shift + noise).clamp(-1, 1)


@dataclass(frozen=True)
class ProbeRecipe:
    width: int = 32
    batch: int = 128
    steps: int = 1200
    lr: float = 2e-3
    heldout_fraction: float = 0.3
    seed: int = 0
    save_every_s: float = 120.0


def train_probe(workdir: Path, recipe: ProbeRecipe = ProbeRecipe(), vae=None, max_steps: int | None = None,
                progress: Callable[[str, int, int, dict], None] | None = None) -> tuple[Probe, dict]:
    torch.manual_seed(recipe.seed)
    probe = Probe(recipe.width)
    opt = torch.optim.AdamW(probe.parameters(), lr=recipe.lr, weight_decay=0.01)

    def step_loss(step: int):
        rng = np.random.default_rng([recipe.seed, step, 13])  # per-step data: exact resume
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        scenes = sample_scenes(rng, recipe.batch, recipe.heldout_fraction)
        x = augment(to_tensor([world.render(s) for s in scenes]), gen, vae)
        y = label_tensor(scenes)
        logits = probe(x)
        return sum(F.cross_entropy(logits[k], y[k]) for k in ATTRIBUTES), {}

    probe.train()
    info = run_loop("probe", workdir / "probe_state", {"probe": probe}, opt, recipe.steps, recipe.lr,
                    lambda step: warmup_cosine(step, recipe.steps, 100), step_loss, max_steps=max_steps,
                    progress=progress, clip=None, save_every_s=recipe.save_every_s)
    return probe.eval(), info


@torch.no_grad()
def load_probe(path) -> Probe:
    """The probe packaged at `path` (probe.safetensors + config.json), refused when it was trained for another
    shapes world (its label space differs from this one's)."""
    import json

    from safetensors.torch import load_file

    from weightshop.errors import WeightshopError

    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    expected = world.label_space()
    trained = config.get("attributes")
    if not isinstance(trained, dict):
        raise WeightshopError(f"{path / 'config.json'}: no 'attributes' (the labels the probe was trained for); "
                              "expected the probe a `weightshop nano build` packages with its family")
    changed = [k for k in expected if trained.get(k) != expected[k]] + [k for k in trained if k not in expected]
    if changed:
        raise WeightshopError(
            f"{path / 'config.json'}: this probe was trained for another shapes world: "
            + "; ".join(f"{k}: probe {trained.get(k)}, this world {expected.get(k)}" for k in changed)
            + ". Use the probe packaged with the same nano family (`weightshop nano build` writes both)")
    probe = Probe(config["width"])
    probe.load_state_dict(load_file(str(path / "probe.safetensors")))
    return probe.eval()


def predict(probe: Probe, images, batch: int = 256) -> list[dict[str, str]]:
    out = []
    for start in range(0, len(images), batch):
        logits = probe(to_tensor(images[start:start + batch]))
        idx = {k: v.argmax(-1).tolist() for k, v in logits.items()}
        for i in range(len(idx[ATTRIBUTES[0]])):
            out.append({k: world.ATTRIBUTE_VALUES[k][idx[k][i]] for k in ATTRIBUTES})
    return out


def relevant(truth: dict[str, str]) -> tuple[str, ...]:
    """Attributes a prompt specifies: position for one object, relation and the second object for two."""
    if truth["count"] == "one":
        return ("shape", "colour", "size", "fill", "background", "count", "position")
    return ("shape", "colour", "fill", "background", "count", "relation", "shape2", "colour2")


def score(predicted: list[dict], scenes: list) -> dict:
    """Per-attribute accuracy, all-attributes-correct rate, held-out concept hit rate, and how often a two-object
    prompt's second object is drawn with the first one's shape or colour instead of its own
    (`object2_copies_object1`: attribute binding failing, over the two-object prompts)."""
    truths = [labels(s) for s in scenes]
    per: dict[str, list[bool]] = {k: [] for k in ATTRIBUTES}
    all_ok, concept, copies = [], [], []
    for p, t in zip(predicted, truths):
        keys = relevant(t)
        for k in keys:
            per[k].append(p[k] == t[k])
        all_ok.append(all(p[k] == t[k] for k in keys))
        if t["count"] != "one":
            copies.append(any(p[k + "2"] != t[k + "2"] and p[k + "2"] == t[k] for k in ("shape", "colour")))
        if t["shape"] == "star" or t["shape2"] == "star":
            concept.append("star" in (p["shape"], p["shape2"]))
        if t["fill"] == "striped":
            concept.append(p["fill"] == "striped")
    result = {f"acc_{k}": float(np.mean(v)) for k, v in per.items() if v}
    result["all_correct"] = float(np.mean(all_ok))
    if concept:
        result["concept_hit_rate"] = float(np.mean(concept))
    if copies:
        result["object2_copies_object1"] = float(np.mean(copies))
    result["n"] = len(scenes)
    return result


def clean_accuracy(probe: Probe, n: int = 2000, seed: int = 99) -> dict:
    """Accuracy on clean renders of every attribute (each attribute over the scenes where it applies)."""
    rng = np.random.default_rng([seed, 17])
    scenes = sample_scenes(rng, n, 0.3)
    predicted = predict(probe, [world.render(s) for s in scenes])
    truths = [labels(s) for s in scenes]
    return {k: float(np.mean([p[k] == t[k] for p, t in zip(predicted, truths)])) for k in ATTRIBUTES}
