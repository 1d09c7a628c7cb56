"""The regression gate and the noise floor on runs with known per-image values: what passes, what fails, and how
often an A/A comparison fails by chance."""

import numpy as np
import pytest

from weightshop.errors import WeightshopError
from weightshop.eval.gate import direction, gate, load_tolerances, noise_floor
from weightshop.eval.harness import EvalRun

IDENTITY = {"backend": "probe", "weights_sha256": "abc", "version": "1"}


def make_run(values: dict[str, np.ndarray], seed_offset=0, sha="m", suite="s1", judges=None, tags=("subject",)):
    n = len(next(iter(values.values())))
    images = [{"id": f"p{i // 2}", "position": i % 2, "seed": i % 2 + seed_offset, "prompt": "x", "tags": list(tags),
               "key": str(i), "file": f"/tmp/{i}.png", "metrics": {m: float(v[i]) for m, v in values.items()}}
              for i in range(n)]
    return EvalRun({"id": "m", "name": "m", "checkpoint": "turbo", "transformer_sha256": sha}, [],
                   {"name": "s", "sha256": suite, "seed_offset": seed_offset}, judges or {"probe": IDENTITY}, images)


def test_the_same_run_against_itself_passes():
    rng = np.random.default_rng(0)
    run = make_run({"probe.adherence": rng.uniform(0.5, 1, 64), "probe.concept": rng.integers(0, 2, 64)})
    result = gate(run, run)
    assert result.passed and result.exit_code == 0
    assert all(r.status == "within tolerance" and r.diff == 0 for r in result.rows)


def test_a_degraded_candidate_fails_with_the_images_that_moved_most():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 1.0, 64)
    worse = base - 0.1 + rng.normal(0, 0.02, 64)
    result = gate(make_run({"probe.adherence": worse}), make_run({"probe.adherence": base}),
                  {"probe.adherence": 0.03})
    row = result.rows[0]
    assert not result.passed and result.exit_code == 1 and row.status == "regressed"
    assert row.diff == pytest.approx(-0.1, abs=0.01) and row.hi < 0
    assert len(result.moved) == 8 and result.moved[0]["candidate"] - result.moved[0]["baseline"] <= row.diff


def test_a_change_inside_the_tolerance_or_the_noise_passes():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.6, 1.0, 64)
    assert gate(make_run({"probe.adherence": base - 0.02}), make_run({"probe.adherence": base}),
                {"probe.adherence": 0.03}).passed  # material only beyond the tolerance
    noisy = base + rng.normal(0, 0.2, 64) - 0.01
    assert gate(make_run({"probe.adherence": noisy}), make_run({"probe.adherence": base})).passed  # not significant


def test_lower_is_better_metrics_and_ungated_ones():
    assert direction("image-stats.distance") == -1 and direction("probe.concept") == 1 and direction("x.y") == 0
    base = np.linspace(0.1, 0.3, 40)
    result = gate(make_run({"image-stats.distance": base + 0.2, "x.other": base}),
                  make_run({"image-stats.distance": base, "x.other": base + 5}))
    status = {r.metric: r.status for r in result.rows}
    assert status == {"image-stats.distance": "regressed", "x.other": "not gated"}


def test_runs_on_other_suites_are_refused_and_other_judges_left_out():
    a = make_run({"probe.adherence": np.ones(8)})
    with pytest.raises(WeightshopError, match="different suites"):
        gate(a, make_run({"probe.adherence": np.ones(8)}, suite="s2"))
    other = make_run({"probe.adherence": np.zeros(8), "geometry.concept": np.ones(8)},
                     judges={"probe": {**IDENTITY, "weights_sha256": "zzz"}, "geometry": IDENTITY})
    result = gate(other, make_run({"probe.adherence": np.ones(8), "geometry.concept": np.ones(8)},
                                  judges={"probe": IDENTITY, "geometry": IDENTITY}))
    assert [r.metric for r in result.rows] == ["geometry.concept"] and "judge probe" in result.notes[0]


def test_noise_floor_and_the_a_a_false_alarm_rate(tmp_path):
    """Two seed sets of one model differ by chance only: gated with the noise floor of another such pair, A/A runs
    fail at about the interval's error rate (here at most 8 % of 200 trials, against a nominal 5 %)."""
    rng = np.random.default_rng(3)

    def seed_set(offset):
        return make_run({"probe.adherence": rng.uniform(0, 1, 48).round(2)}, seed_offset=offset)

    floor = noise_floor(seed_set(0), seed_set(1000))
    assert floor["tolerances"]["probe.adherence"] > 0
    with pytest.raises(WeightshopError, match="two seed sets"):
        noise_floor(seed_set(0), seed_set(0))
    with pytest.raises(WeightshopError, match="same model"):
        noise_floor(seed_set(0), make_run({"probe.adherence": np.ones(48)}, seed_offset=5, sha="other"))
    fails = sum(not gate(seed_set(1000), seed_set(0)).passed for _ in range(200))
    assert fails <= 16
    fails_with_floor = sum(not gate(seed_set(1000), seed_set(0), floor["tolerances"]).passed for _ in range(200))
    assert fails_with_floor <= fails
    path = tmp_path / "floor.json"
    from weightshop.eval.gate import save_noise_floor

    save_noise_floor(floor, path)
    assert load_tolerances(path) == floor["tolerances"]
    (tmp_path / "t.yaml").write_text("probe.adherence: -1\n")
    with pytest.raises(WeightshopError, match="metric: tolerance"):
        load_tolerances(tmp_path / "t.yaml")
