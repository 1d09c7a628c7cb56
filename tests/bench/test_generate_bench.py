"""`weightshop bench generate` in its reduced mode on krea2-nano: the numbers are sane, every row's image is checked
against the reference configuration, and the run's order, warm-up, budget and partial reports hold."""

import json

import pytest
import torch

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
    assert report["checks"]["tolerance"] == 1e-3 and report["checks"]["bf16_tolerance"] == 2e-2  # fp32 on the CPU
    assert report["weights"] == "checkpoint" and report["complete"]
    assert rows["padded"]["image_check"]["max_abs_diff"] == 0.0 and rows["padded"]["image_check"]["reference"] == (
        "padded")
    assert rows["eager"]["image_check"]["within_tolerance"] and not rows["eager"]["image_check"]["saturated"]
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
    result = CliRunner().invoke(app, ["bench", "generate", "--configs", "padded,eager", "--batches", "1", "--repeats",
                                      "1", "--warmup", "0", "--cache-thresholds", "", "--raw-model", "", "--out",
                                      str(out)])
    assert result.exit_code == 0, result.output
    assert "x stock" in result.output and "diffusers ships it" in result.output
    report = json.loads(out.read_text())
    padded, eager = report["rows"]
    assert (padded["config"], eager["config"]) == ("padded", "eager") and report["complete"]
    # the defaults' image against the padded row's: trimmed text moves it by float rounding only
    assert eager["image_check"]["reference"] == "padded" and 0 <= eager["image_check"]["max_abs_diff"] <= 1e-3
    assert eager["image_check"]["within_tolerance"] and not eager["image_check"]["saturated"]
    assert out.with_suffix(".png").stat().st_size > 0
    bad = CliRunner().invoke(app, ["bench", "generate", "--configs", "eager,turbo-mode"])
    assert bad.exit_code == 2 and "turbo-mode" in bad.output and "padded" in bad.output


# ---------------------------------------------------------------------------------------------------
# The run's rules, checked without timing anything


def test_order_puts_batch_rows_after_eager_and_offload_last():
    from weightshop.bench.generate import run_order

    resident, offloaded = run_order(["offload-model", "padded", "compile", "eager", "cuda-graphs"], [1, 2, 4])
    assert resident == [("padded", 1), ("compile", 1), ("eager", 1), ("eager", 2), ("eager", 4), ("cuda-graphs", 1)]
    assert offloaded == [("offload-model", 1)]
    resident, _ = run_order(["padded", "int8"], [2])  # no eager row: the batch rows close the resident part
    assert resident == [("padded", 1), ("int8", 1), ("eager", 2)]


def test_compiling_configurations_warm_up_twice_and_fp8_compiled_ones_are_listed():
    from weightshop.bench.generate import CONFIGS, DEFAULT, lossy, warmup_rounds

    for name in ("compile", "cuda-graphs", "fp8-mm+compile", "fp8-mm+cuda-graphs"):
        assert warmup_rounds(name, 0) == 2 and warmup_rounds(name, 1) == 2 and warmup_rounds(name, 3) == 3
    assert warmup_rounds("eager", 0) == 0 and warmup_rounds("fp8-mm", 1) == 1
    assert CONFIGS["fp8-mm+compile"][1] == {"fp8_matmul": True, "compile": True}
    assert CONFIGS["fp8-mm+cuda-graphs"][1] == {"fp8_matmul": True, "cuda_graphs": True}
    assert CONFIGS["unbatched"][0] == {"batch_guidance": False}
    assert {"fp8-mm+compile", "fp8-mm+cuda-graphs"} <= set(DEFAULT.split(","))
    assert all(n in CONFIGS for n in DEFAULT.split(","))
    assert lossy("fp8-mm+compile") and lossy("int8") and not lossy("cuda-graphs") and not lossy("unbatched")


def test_available_refuses_each_missing_part(monkeypatch):
    import weightshop.generate.fast as fast
    from weightshop.bench.generate import available

    for name in ("fp8-mm", "fp8-mm+compile", "fp8-mm+cuda-graphs"):
        assert "float8" in available(name, "cpu")
    assert "CUDA graphs" in available("cuda-graphs", "cpu") and "offload" in available("offload-group", "cpu")
    assert all(available(n, "cpu") is None for n in ("eager", "unbatched", "padded", "compile", "int8-mm", "int8"))
    monkeypatch.setattr(fast, "fp8_matmul_available", lambda device: True)  # fp8 there, CUDA not: the graphs refuse
    assert available("fp8-mm+compile", "cpu") is None and "CUDA graphs" in available("fp8-mm+cuda-graphs", "cpu")


def test_batch_prompts_are_distinct():
    from weightshop.bench.generate import PROMPT, batch_prompts

    assert batch_prompts(1) == [PROMPT]
    for n in (2, 8, 12):
        prompts = batch_prompts(n)
        assert len(set(prompts)) == n and prompts[0] == PROMPT


def test_batch_rows_give_stock_and_weightshop_the_same_distinct_prompts(tiny_raw, monkeypatch):
    import weightshop.bench.generate as bench

    calls = {"stock": [], "weightshop": []}

    def stock(model, prompts, seeds, *args):
        calls["stock"].append((list(prompts), list(seeds)))
        return 1.0, {"encode": 0.1, "steps": [0.1], "decode": 0.1}

    def ours(model, request, device, images=None):
        calls["weightshop"].append(list(request.prompts))
        return 0.5, {"encode": [0.1], "steps": [], "decode": [], "cached_steps": 0}  # as under offload

    monkeypatch.setattr(bench, "run_stock", stock)
    monkeypatch.setattr(bench, "run_weightshop", ours)
    row = bench.measure_config(tiny_raw, "compile", size=32, steps=2, batch=2, repeats=1, warmup=0, device="cpu",
                               memory=False)
    assert row["warmup"] == 2 and len(calls["stock"]) == len(calls["weightshop"]) == 3  # compiling: 2 warm-ups
    assert all(p == bench.batch_prompts(2) for p in calls["weightshop"])
    assert all(c == (bench.batch_prompts(2), [0, 0]) for c in calls["stock"])
    assert row["weightshop"]["step_s"] is None and row["weightshop"]["decode_s"] is None  # no clock saw them


def test_image_check_flags():
    from weightshop.bench.generate import image_check

    ref = torch.rand(1, 3, 8, 8)
    same = image_check(ref.clone(), ref, "eager", 1e-3, False)
    assert same["max_abs_diff"] == 0.0 and same["within_tolerance"] and not same["saturated"]
    off = image_check(ref + 0.1, ref, "eager", 1e-3, True)
    assert abs(off["max_abs_diff"] - 0.1) < 1e-6 and not off["within_tolerance"] and off["lossy"]
    assert image_check(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5), "padded", 2e-2, False)["saturated"]


def test_random_model_is_seeded_and_keeps_the_checkpoints_fp32_modules():
    from weightshop.bench.generate import fits, random_model
    from weightshop.models.loading import load_model, resolve_source, text_encoder_select_layers
    from weightshop.models.shape import model_shape, source_component_configs

    source = resolve_source("krea2-nano-turbo")
    kwargs = dict(config=model_shape("krea2-nano-turbo").config, components=source_component_configs(source),
                  select_layers=text_encoder_select_layers(source.components))
    assert fits(kwargs["config"], torch.bfloat16, "cpu")  # offload configurations would draw on the device too
    a, shared = random_model("turbo", "cpu", torch.bfloat16, **kwargs)
    b, _ = random_model("turbo", "cpu", torch.bfloat16, shared, **kwargs)
    c, other = random_model("turbo", "cpu", torch.bfloat16, **kwargs)
    ta, tb = a.pipeline.transformer, b.pipeline.transformer
    norms = [n for n, _ in ta.named_parameters() if "norm" in n]
    assert norms and all(ta.get_parameter(n).dtype == torch.float32 for n in norms)
    assert ta.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16
    # the dtypes a real bf16 load leaves (diffusers' _keep_in_fp32_modules), parameter by parameter
    real = load_model("krea2-nano-turbo", dtype="bf16").pipeline.transformer
    assert {n: p.dtype for n, p in ta.named_parameters()} == {n: p.dtype for n, p in real.named_parameters()}
    for x, y in ((ta, tb), (ta, c.pipeline.transformer), (shared.text_encoder, other.text_encoder),
                 (shared.vae, other.vae)):
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)
    # an offload configuration's hooks come off the shared modules before the next load
    from accelerate.hooks import ModelHook, add_hook_to_module

    from weightshop.bench.generate import unhook

    add_hook_to_module(shared.vae, ModelHook())
    add_hook_to_module(shared.text_encoder.language_model, ModelHook())
    unhook(shared)
    assert not any(hasattr(m, "_hf_hook") for m in [*shared.vae.modules(), *shared.text_encoder.modules()])


def test_budget_skips_every_section_and_resets_compiled_graphs(monkeypatch, tmp_path):
    import weightshop.bench.generate as bench

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    report = bench.run_bench(model="krea2-nano-turbo", raw_model="krea2-nano-raw", configs="offload-model,eager,padded",
                             batches="1,2", device="cpu", budget_s=-1, memory_profile=True, out=tmp_path / "r.json")
    assert [(r["config"], r["batch"]) for r in report["rows"]] == [("eager", 1), ("eager", 2), ("padded", 1),
                                                                   ("offload-model", 1)]
    assert all(r["skipped"] == "time budget" for r in report["rows"][:3])
    assert report["step_cache"] == [{"skipped": "time budget"}] and report["memory_profile"] == {
        "skipped": "time budget"}
    assert len(resets) >= 4 and json.loads((tmp_path / "r.json").read_text())["complete"]


def test_report_is_written_after_every_row(tmp_path):
    from weightshop.bench.generate import run_bench

    out = tmp_path / "g.json"
    seen = []

    def progress(row):
        written = json.loads(out.read_text())
        seen.append((row["config"], row["batch"], len(written["rows"]), written["complete"]))

    report = run_bench(model="krea2-nano-turbo", configs="eager,padded", batches="1,2", repeats=1, warmup=0,
                       cache_thresholds="", memory=False, stock_checks=False, device="cpu", out=out,
                       progress=progress)
    assert seen == [("eager", 1, 1, False), ("eager", 2, 2, False), ("padded", 1, 3, False)]
    assert json.loads(out.read_text()) == json.loads(json.dumps(report)) and report["complete"]
    assert "own_loop_vs_stock" not in report["checks"]  # stock_checks=False
    batch2 = report["rows"][1]
    assert batch2["image_check"]["reference"] == "eager" and batch2["image_check"]["within_tolerance"]


def test_table_shows_rows_without_stage_numbers():
    from rich.console import Console

    from weightshop.cli.bench import generate_table

    ws = {"s_per_image": 1.0, "step_s": None, "tflops_per_s": None, "mfu": None, "decode_s": None,
          "dollars_per_image": 0.001}
    report = {"device": "cpu", "model": "m", "size": 64, "rows": [
        {"config": "offload-model", "batch": 1, "stock": {"s_per_image": 2.0}, "weightshop": ws, "speedup": 2.0,
         "image_check": {"max_abs_diff": 0.5, "within_tolerance": False, "lossy": False, "saturated": True}},
        {"config": "fp8-mm", "batch": 1, "skipped": "float8 matmuls need CUDA compute capability 8.9+"}]}
    console = Console(width=200, record=True)
    console.print(generate_table(report))
    text = console.export_text()
    assert "img diff" in text and "5.0e-01 (over, saturated)" in text and "float8" in text
