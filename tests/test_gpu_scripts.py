"""The prepared GPU scripts run their whole path at krea2-nano size on the CPU, so a lent GPU never meets a bug that
the CPU could have shown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightshop.models import builtin

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not builtin.installed(), reason="krea2-nano is not built")
def test_gpu_quant_runs_every_stage_at_nano_size(tmp_path):
    out = tmp_path / "gq.json"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_quant.py"), "--nano", "--device", "cpu",
                           "--size", "32", "--steps", "1", "--text-tokens", "16", "--formats", "bf16,fp8,int8,q4_k",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["format"] for r in report["rows"]] == ["bf16", "fp8", "int8", "q4_k"]
    assert report["encode"]["seconds"] > 0 and len(report["decode"]) == 2
    by = {r["format"]: r for r in report["rows"]}
    for r in report["rows"]:
        assert r["s_per_step"] > 0 and r["image_tokens"] == by["bf16"]["image_tokens"] > 0 and r["text_tokens"] == 16
    # the planner's prediction for the same mode: quantized blocks weigh less than bf16 ones, 4 bits less than 8
    assert by["q4_k"]["predicted_gib"] < by["fp8"]["predicted_gib"] < by["bf16"]["predicted_gib"]
    assert by["fp8"]["goal_gib"] == 16.0 and by["q4_k"]["goal_gib"] == 10.0 and by["bf16"]["goal_gib"] is None


@pytest.mark.skipif(not builtin.installed(), reason="krea2-nano is not built")
def test_gpu_generate_runs_its_whole_path_at_nano_size(tmp_path):
    env = {**os.environ, "NANO": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_generate.sh")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    report = json.loads((tmp_path / "gpu_generate.json").read_text())
    assert (tmp_path / "gpu_generate.png").stat().st_size > 0
    row = report["rows"][0]
    assert row["config"] == "eager" and row["speedup"] > 0 and row["weightshop"]["step_s"] > 0
    assert report["checks"]["trimmed_vs_padded"] <= 1e-3 and report["step_cache"][0]["steps"] == 2
    assert report["memory_profile"]["stages"]["denoise"] > 0 and (tmp_path / "gpu_generate.memory.png").is_file()
    assert report["complete"] and report["checks"]["tolerance"] == 1e-3 and row["image_check"]["reference"] == "eager"
    # then Raw at its own preset: the defaults and unbatched guidance, each image checked against the first
    raw = json.loads((tmp_path / "gpu_generate_raw.json").read_text())
    assert raw["complete"] and [r["config"] for r in raw["rows"]] == ["eager", "unbatched"]
    for r in raw["rows"]:
        assert r["checkpoint"] == "raw" and r["steps"] == 52 and r["guided"] and r["speedup"] > 0
        assert r["image_check"]["reference"] == "eager" and r["image_check"]["within_tolerance"]
    assert raw["step_cache"] == [] and raw["memory_profile"] is None and "own_loop_vs_stock" not in raw["checks"]
