"""`weightshop bench generate` in its reduced mode on krea2-nano: the numbers are sane."""

import json

import pytest

from weightshop.models import builtin

pytestmark = pytest.mark.skipif(not builtin.installed(), reason="krea2-nano is not built")


def test_reduced_bench_is_sane(tmp_path):
    from tests.models.test_flops import NANO_FORWARD
    from weightshop.bench.generate import plot, run_bench

    report = run_bench(model="krea2-nano-turbo", raw_model="krea2-nano-raw", configs="padded,eager,offload-model",
                       batches="1", repeats=1, warmup=0, raw_steps=3, cache_thresholds="10", device="cpu")
    rows = {r["config"]: r for r in report["rows"]}
    assert "skipped" in rows["offload-model"]  # nothing to offload to on a CPU
    for name in ("padded", "eager"):
        r = rows[name]
        assert r["speedup"] > 0 and r["speedup_vs_stock_baseline"] > 0 and r["peak_bytes"] > 0
        for who in ("stock", "weightshop"):
            assert r[who]["encode_s"] > 0 and r[who]["decode_s"] > 0 and r[who]["step_s"] > 0
            assert r[who]["dollars_per_image"] > 0 and r[who]["mfu"] is None  # no known peak for a CPU
        # krea2-nano-turbo at 64 px, 32 padded text tokens, 8 steps: the FLOP model's hand count
        assert r["flops"]["per_image_padded"] == 8 * NANO_FORWARD
        assert r["flops"]["per_image"] < r["flops"]["per_image_padded"]
    assert report["checks"]["own_loop_vs_stock"] == 0.0 and report["checks"]["trimmed_vs_padded"] <= 1e-3
    assert report["checks"]["fast_vae_vs_shipped"] <= 1e-3  # stock is timed on diffusers' own VAE forwards
    cache = report["step_cache"][0]
    assert cache["cached_steps"] > 0 and cache["speedup"] > 0 and cache["max_abs_drift"] > 0
    assert plot(report, tmp_path / "g.png").stat().st_size > 0
    json.dumps(report)


def test_memory_profile_on_cpu_and_the_snapshot_summary(tiny_raw, tmp_path):
    from weightshop.bench.generate import memory_plot, memory_profile_of, snapshot_summary

    profile = memory_profile_of(tiny_raw, 32, 2, "cpu")
    stages = profile["stages"]
    assert stages["start"] > 0 and stages["denoise"] > 0 and "cuda" not in profile
    frame = lambda f: [{"filename": f"/x/site-packages/{f}", "line": 1, "name": "fn"}]  # noqa: E731
    snapshot = {  # the fields torch.cuda.memory._snapshot() has that the summary reads
        "segments": [{"address": 0, "total_size": 4096, "allocated_size": 3072, "active_size": 3072,
                      "segment_type": "large", "blocks": [{}, {}]}],
        "device_traces": [[
            {"action": "alloc", "addr": 0, "size": 1024, "frames": frame("diffusers/attention.py")},
            {"action": "alloc", "addr": 1024, "size": 2048, "frames": frame("weightshop/generate/fast.py")},
            {"action": "free_requested", "addr": 0, "size": 1024, "frames": []},
            {"action": "alloc", "addr": 0, "size": 512, "frames": frame("torch/x.py")},
        ]]}
    summary = snapshot_summary(snapshot)
    assert summary["reserved_bytes"] == 4096 and summary["traced_peak_bytes"] == 3072
    assert [r["bytes"] for r in summary["at_peak_by_site"]] == [2048, 1024]
    assert summary["at_peak_by_site"][0]["site"].startswith("weightshop/generate/fast.py:1")
    json.dumps(summary)
    assert memory_plot({**profile, "cuda": summary}, tmp_path / "m.png").stat().st_size > 0


def test_step_cache_drift_is_judged_on_a_suite(tiny_raw, tmp_path):
    from weightshop.bench.step_cache import step_cache_drift
    from weightshop.eval.suites import nano_suite

    suite = nano_suite("star", subject=2, plain=1).model_copy(update={"seeds": [0]})
    report = step_cache_drift(tiny_raw, [10.0], tmp_path, suite=suite, judges=[], features=False)
    row = report["rows"][0]
    assert report["images"] == 3 and row["pairs"] == 3 and row["threshold"] == 10.0
    assert row["psnr"] < 100 and row["speedup"] > 0  # the cache answered steps: the images moved
    assert 0 < row["cached_steps"] < row["steps_run"] == 3 * 52
    json.dumps(report)


def test_cli_bench_generate(tmp_path):
    from typer.testing import CliRunner

    from weightshop.cli.main import app

    out = tmp_path / "g.json"
    result = CliRunner().invoke(app, ["bench", "generate", "--configs", "eager", "--batches", "1", "--repeats", "1",
                                      "--warmup", "0", "--cache-thresholds", "", "--raw-model", "", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "x stock" in result.output and "diffusers ships it" in result.output
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["config"] == "eager" and row["speedup"] == row["stock"]["seconds"] / row["weightshop"]["seconds"]
    assert out.with_suffix(".png").stat().st_size > 0
    bad = CliRunner().invoke(app, ["bench", "generate", "--configs", "eager,turbo-mode"])
    assert bad.exit_code == 2 and "turbo-mode" in bad.output and "padded" in bad.output
