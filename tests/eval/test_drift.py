"""The drift measurement on hand-made runs (pixels, features and judge values known), then end to end on the tiny
model: every format exported, loaded back, rendered and compared."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weightshop.eval.drift import PSNR_CAP, drift_row, table_rows
from weightshop.eval.harness import FEATURES_FILE, EvalRun


def make_run(tmp_path, name, arrays, adherence, features=None):
    folder = tmp_path / name
    folder.mkdir()
    images = []
    for i, (a, adh) in enumerate(zip(arrays, adherence)):
        path = folder / f"{i}.png"
        Image.fromarray(a).save(path)
        images.append({"id": f"p{i}", "position": 0, "seed": 0, "prompt": f"prompt {i}", "tags": [], "key": str(i),
                       "file": str(path), "metrics": {"probe.adherence": adh}})
    if features is not None:
        np.save(folder / FEATURES_FILE, features)
    return EvalRun(model={}, loras=[], suite={"name": "s", "sha256": "x"}, judges={}, images=images,
                   dir=str(folder))


def pictures(n, seed=0, side=32):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def test_identical_runs_have_no_drift(tmp_path):
    imgs, feats = pictures(6), np.random.default_rng(1).normal(size=(6, 16))
    ref = make_run(tmp_path, "ref", imgs, [0.8] * 6, feats)
    same = make_run(tmp_path, "same", imgs, [0.8] * 6, feats)
    row = drift_row("copy", ref, same)
    assert row.psnr == PSNR_CAP and row.psnr_min == PSNR_CAP  # identical pairs count as the cap, not infinity
    assert row.ssim == pytest.approx(1.0)
    assert row.feature_distance == pytest.approx(0.0, abs=1e-9)
    assert row.gate_passed is True and row.adherence_delta == pytest.approx(0.0)
    assert row.pairs == 6


def test_psnr_matches_the_hand_count_and_the_worst_pair_comes_first(tmp_path):
    base = [np.full((16, 16, 3), 100, np.uint8) for _ in range(3)]
    moved = [b.copy() for b in base]
    moved[0][:] = 110  # MSE 100 -> 10 log10(255^2 / 100) dB
    moved[2][:] = 101  # MSE 1
    row = drift_row("q", make_run(tmp_path, "ref", base, [1, 1, 1]), make_run(tmp_path, "q", moved, [1, 1, 1]),
                    worst_k=2)
    expected = [10 * math.log10(255 ** 2 / 100), PSNR_CAP, 10 * math.log10(255 ** 2)]
    assert row.psnr == pytest.approx(np.mean(expected))
    assert row.psnr_min == pytest.approx(expected[0])
    assert [w["id"] for w in row.worst] == ["p0", "p2"]
    assert row.feature_distance != row.feature_distance  # no features stored: NaN, and no KID
    assert row.kid is None


def test_a_judged_drop_fails_the_gate_and_a_small_one_does_not(tmp_path):
    imgs = pictures(40)
    rng = np.random.default_rng(3)
    ref = make_run(tmp_path, "ref", imgs, [0.9] * 40)
    dropped = make_run(tmp_path, "dropped", imgs, list(0.9 - 0.2 * (rng.random(40) < 0.5)))
    slight = make_run(tmp_path, "slight", imgs, [0.9] * 39 + [0.8])  # one image, 0.25 points on average
    bad = drift_row("bad", ref, dropped)
    assert bad.gate_passed is False and bad.adherence_delta < -0.03 and bad.adherence_hi < 0
    ok = drift_row("ok", ref, slight)
    assert ok.gate_passed is True and ok.adherence_delta == pytest.approx(-0.1 / 40)
    # an explicit tolerance wider than the drop lets it through
    assert drift_row("tolerant", ref, dropped, tolerances={"probe.adherence": 0.5}).gate_passed is True


def test_feature_distance_and_kid_follow_the_features(tmp_path):
    imgs = pictures(8)
    f = np.random.default_rng(5).normal(size=(8, 12))
    g = -f  # every pair points the opposite way: cosine distance 2
    row = drift_row("flip", make_run(tmp_path, "ref", imgs, [1] * 8, f), make_run(tmp_path, "flip", imgs, [1] * 8, g))
    assert row.feature_distance == pytest.approx(2.0)
    assert row.kid is not None and math.isfinite(row.kid)


def test_table_rows_read_a_summary():
    summary = {"formats": [{"format": "fp8", "file_bytes": 5_000_000, "reference_bytes": 10_000_000,
                            "layer_errors": {"a": 0.01, "b": 0.03}, "rows": [
                                {"lora": False, "psnr": 30.0, "ssim": 0.95, "feature_distance": 0.001, "kid": 0.0,
                                 "adherence_delta": -0.01, "gate_passed": True}]}]}
    (row,) = table_rows(summary)
    assert row["size vs ref"] == 0.5 and row["max layer err"] == 0.03 and row["gate"] == "pass"


class BrightnessJudge:
    """A stand-in judge: each image's mean brightness as its `adherence` (a gated, higher-is-better metric)."""

    name = "brightness"

    def __init__(self):
        from weightshop.judge import JudgeIdentity

        self.identity = JudgeIdentity("mean brightness", "", "1")

    def per_image(self, images, jobs):
        return {"adherence": [float(np.asarray(im).mean() / 255) for im in images]}


def test_measure_drift_end_to_end_with_and_without_a_lora(tiny_dirs, tmp_path):
    """Each format exported, loaded back as a user would load the file, rendered with and without a LoRA, and
    compared with the unquantized model: exact-copy-free drift, sizes below the reference, the files on disk, the
    report written."""
    import json

    from tests.lora.test_formats import make_lora
    from weightshop.eval.drift import measure_drift
    from weightshop.eval.generation import LoraUse
    from weightshop.eval.suites import Suite, SuitePrompt
    from weightshop.lora.formats import save_canonical
    from weightshop.models.loading import load_model

    model = load_model(tiny_dirs[1], dtype="fp32")
    lora = save_canonical(make_lora(model.pipeline.transformer, seed=4), tmp_path / "l.safetensors", "diffusers")
    suite = Suite(name="tiny", seeds=[0, 1], width=32, height=32,
                  prompts=[SuitePrompt(id="a", prompt="a red square"), SuitePrompt(id="b", prompt="a blue circle")])
    summary = measure_drift(model, ["fp8", "q4_0"], tmp_path / "drift", suite=suite, judges=[BrightnessJudge()],
                            loras=[LoraUse(lora, 1.0)])
    assert [f["format"] for f in summary["formats"]] == ["fp8", "q4_0"]
    for f in summary["formats"]:
        assert [r["lora"] for r in f["rows"]] == [False, True]
        # (the tiny model's files are mostly header and kept layers: sizes are checked on nano in tests/models)
        assert Path(f["path"]).stat().st_size == f["file_bytes"]
        assert f["resident_bytes"] < summary["reference_resident_bytes"]
        assert f["peak_bytes"] > f["resident_bytes"]
        assert f["quantized_layers"] > 0 and f["layer_errors"]
        for r in f["rows"]:
            assert r["pairs"] == 4 and 0 < r["psnr"] < 100 and r["gate_passed"] is not None
    fp8, q4 = summary["formats"]
    assert max(fp8["layer_errors"].values()) < max(q4["layer_errors"].values())  # 4 bits err more than 8
    saved = json.loads((tmp_path / "drift" / "drift.json").read_text())
    assert saved["report"].endswith("report.html") and (tmp_path / "drift" / "report.html").stat().st_size > 1000
