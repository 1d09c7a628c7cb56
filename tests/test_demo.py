"""The demo's acceptance arithmetic (issue 5's targets), on hand-made transfer rows."""

import pytest

from weightshop.demo import acceptance


def rows(raw, turbo, raw0, turbo0, adh=(0.9, 0.88, 0.9, 0.9)):
    return [{"label": "Raw + LoRA", "concept": raw, "adherence": adh[0]},
            {"label": "Turbo + LoRA 0.5", "concept": 0.1, "adherence": 0.9},
            {"label": "Turbo + LoRA 1", "concept": turbo, "adherence": adh[1]},
            {"label": "Turbo alone", "concept": turbo0, "adherence": adh[3]},
            {"label": "Raw alone", "concept": raw0, "adherence": adh[2]}]


def test_acceptance_passes_and_reports_every_number():
    a = acceptance(rows(0.85, 0.80, 0.0, 0.02))
    assert a["turbo_over_raw"] == pytest.approx(0.80 / 0.85)
    assert a["raw_adherence_drop_points"] == pytest.approx(0.0)
    assert a["turbo_adherence_drop_points"] == pytest.approx(2.0)
    assert a["raw_hit_rate_before"] == 0.0 and a["passed"]


@pytest.mark.parametrize("case", [
    rows(0.75, 0.75, 0, 0),                              # Raw below 80 %
    rows(0.90, 0.80, 0, 0),                              # Turbo only 0.89 x Raw
    rows(0.90, 0.90, 0, 0, adh=(0.80, 0.9, 0.9, 0.9)),   # Raw adherence drops 10 points
])
def test_acceptance_fails_each_target(case):
    assert acceptance(case)["passed"] is False


def test_acceptance_without_adherence_has_no_verdict():
    a = acceptance([{k: v for k, v in r.items() if k != "adherence"} for r in rows(0, 0, 0, 0)])
    assert a["turbo_over_raw"] is None and "passed" not in a


def test_demo_refuses_a_concept_raw_has_seen(tmp_path):
    from weightshop.demo import run_demo
    from weightshop.errors import WeightshopError

    with pytest.raises(WeightshopError, match="demo concept 'circle': expected one of star, striped"):
        run_demo(tmp_path, concept="circle")
    assert not any(tmp_path.iterdir())  # refused before anything was written
