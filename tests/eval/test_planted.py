"""Planted cases on krea2-nano at reduced size: the checkpoint against itself passes the gate, a copy with noise
added to its weights fails it (docs/eval.md has the full-size figures and the smallest noise that fails)."""

import numpy as np
import pytest

from weightshop.eval.gate import gate
from weightshop.eval.harness import evaluate
from weightshop.eval.planted import noisy_copy
from weightshop.eval.suites import nano_suite
from weightshop.models import builtin

pytestmark = pytest.mark.skipif(not builtin.installed(), reason="krea2-nano weights not built")


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
    bad = run(load_model(noisy_copy(builtin.paths()[1], tmp_path / "noisy", 0.5), checkpoint="turbo", dtype="fp32"), "bad")
    result = gate(bad, a, {"probe.adherence": 0.02}, metrics=["probe.adherence", "probe.all_correct"])
    assert not result.passed, [(r.metric, r.diff, r.lo, r.hi) for r in result.rows]
    assert np.mean([r.diff for r in result.rows]) < 0
