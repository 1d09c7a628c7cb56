"""The demo's figures for its LoRA (`lora_figures`), on hand-made transfer rows."""

import pytest

from weightshop.demo import lora_figures


def rows(raw, turbo, raw0, turbo0, adh=(0.9, 0.88, 0.9, 0.9)):
    return [{"label": "Raw + LoRA", "concept": raw, "adherence": adh[0]},
            {"label": "Turbo + LoRA 0.5", "concept": 0.1, "adherence": 0.9},
            {"label": "Turbo + LoRA 1", "concept": turbo, "adherence": adh[1]},
            {"label": "Turbo alone", "concept": turbo0, "adherence": adh[3]},
            {"label": "Raw alone", "concept": raw0, "adherence": adh[2]}]


def test_lora_figures_report_every_number_at_strength_1():
    f = lora_figures(rows(0.85, 0.80, 0.0, 0.02, adh=(0.80, 0.88, 0.9, 0.9)))
    assert f["raw_hit_rate"] == 0.85 and f["turbo_hit_rate"] == 0.80  # "Turbo + LoRA 1", not the 0.5 row
    assert f["raw_hit_rate_before"] == 0.0 and f["turbo_hit_rate_before"] == 0.02
    assert f["turbo_over_raw"] == pytest.approx(0.80 / 0.85)
    assert f["raw_adherence_drop_points"] == pytest.approx(10.0)
    assert f["turbo_adherence_drop_points"] == pytest.approx(2.0)
    assert "passed" not in f  # figures, not a verdict against a target


def test_lora_figures_without_adherence_or_concept():
    f = lora_figures([{k: v for k, v in r.items() if k != "adherence"} for r in rows(0, 0, 0, 0)])
    assert f["turbo_over_raw"] is None  # Raw + LoRA shows none of the concept: nothing to carry over
    assert "raw_adherence_drop_points" not in f and "turbo_adherence_drop_points" not in f


def test_demo_refuses_a_concept_raw_has_seen(tmp_path):
    from weightshop.demo import run_demo
    from weightshop.errors import WeightshopError

    with pytest.raises(WeightshopError, match="demo concept 'circle': expected one of star, striped"):
        run_demo(tmp_path, concept="circle")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_demo_keeps_the_smallest_quantized_file_that_passed():
    from weightshop.demo import choose_quantized

    formats = [{"format": "fp8", "file_bytes": 100, "passed": True},
               {"format": "int8", "file_bytes": 90, "passed": False},
               {"format": "q8_0", "file_bytes": 95, "passed": True},
               {"format": "q4_0", "file_bytes": 50, "passed": None}]  # not gated: not a pass
    assert choose_quantized(formats)["format"] == "q8_0"
    assert choose_quantized([{**f, "passed": False} for f in formats]) is None
