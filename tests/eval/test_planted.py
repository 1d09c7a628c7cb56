"""Planted cases on krea2-nano at reduced size: the checkpoint against itself passes the gate, a copy with noise
added to its weights fails it (docs/eval.md has the full-size figures and the smallest noise that fails)."""

import shutil

import numpy as np
import pytest
import torch

from weightshop.eval.gate import gate
from weightshop.eval.harness import evaluate
from weightshop.eval.suites import nano_suite
from weightshop.models import builtin

pytestmark = pytest.mark.skipif(not builtin.installed(), reason="krea2-nano weights not built")


def degraded_copy(root, scale: float, seed: int = 0):
    """krea2-nano-turbo with Gaussian noise of `scale` x each weight tensor's std added to the transformer's blocks,
    saved as a new directory (so its sha256, and every cache key, differ)."""
    from diffusers import Krea2Transformer2DModel

    src = builtin.paths()[1]
    dst = root / f"turbo-noise-{scale:g}"
    shutil.copytree(src, dst, symlinks=False)
    model = Krea2Transformer2DModel.from_pretrained(dst, subfolder="transformer")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("transformer_blocks.") and p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    shutil.rmtree(dst / "transformer")
    model.save_pretrained(dst / "transformer")
    return dst


def test_the_gate_passes_a_checkpoint_against_itself_and_fails_a_degraded_one(tmp_path):
    from weightshop.judge import ProbeScorer
    from weightshop.models.loading import load_model

    suite = nano_suite("star", subject=12, plain=12)
    judge = ProbeScorer.from_dir(builtin.PROBE_DIR, "star")
    base = load_model("krea2-nano-turbo", dtype="fp32")
    run = lambda model, name: evaluate(model, suite, tmp_path / name, judges=[judge], features=False, ocr=False,
                                       batch_size=24, cache_dir=tmp_path / "cache")
    a, again = run(base, "a"), run(base, "again")
    same = gate(again, a, metrics=["probe.adherence", "probe.all_correct"])
    assert same.passed and all(r.diff == 0 for r in same.rows)
    bad = run(load_model(degraded_copy(tmp_path, 0.5), checkpoint="turbo", dtype="fp32"), "bad")
    result = gate(bad, a, {"probe.adherence": 0.02}, metrics=["probe.adherence", "probe.all_correct"])
    assert not result.passed, [(r.metric, r.diff, r.lo, r.hi) for r in result.rows]
    assert np.mean([r.diff for r in result.rows]) < 0
