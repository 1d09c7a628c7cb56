"""`weightshop plan`: parameter counts from the meta model, the activation formula, suggestions, and the
prediction checked against the real peak of training steps measured on CPU."""

import json

import pytest
from typer.testing import CliRunner

from weightshop.cli.main import app
from weightshop.errors import WeightshopError
from weightshop.train import load_config
from weightshop.models.shape import full_size_shape, model_shape
from weightshop.quant.formats import stored_bytes
from weightshop.train.plan import (GiB, activation_dtypes, base_weight_bytes, count_parameters, measure_training_step,
                                   parse_gpu, plan, predict)

MiB = 2**20
FIELDS = {"model_dtype": "model.dtype", "autocast": "memory.autocast", "base_dtype": "memory.base_dtype",
          "checkpointing": "memory.gradient_checkpointing", "rank": "lora.rank", "targets": "lora.targets",
          "dora": "lora.dora", "batch_size": "schedule.batch_size", "grad_accum": "schedule.grad_accum",
          "text_fusion": "lora.text_fusion"}


def run(model_dtype="bf16", **fields):
    """A run config (the trainer's TrainConfig) with the memory-relevant fields given by short names."""
    overrides = [f"{FIELDS[k]}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in
                 {"model_dtype": model_dtype, **fields}.items()]
    return load_config(overrides=["data.manifest=(planning)", *overrides])


def lora(targets="krea-default", rank=32):
    return run(targets=targets, rank=rank)


@pytest.fixture(scope="module")
def full():
    return full_size_shape()


@pytest.fixture(scope="module")
def nano():
    return model_shape("krea2-nano")  # the committed weights when built, else the recipe's shape


def test_parse_gpu():
    assert parse_gpu("24GB") == parse_gpu("24GiB") == parse_gpu("24") == parse_gpu(" 24 gb ") == 24 * GiB
    assert parse_gpu("80") == 80 * GiB
    assert parse_gpu("H100") == 81559 * MiB  # as nvidia-smi reports an H100 80GB
    assert parse_gpu("4090") == parse_gpu("RTX4090") == 24564 * MiB
    assert parse_gpu("24564MiB") == 24564 * MiB
    for bad in ("banana", "0", "24TB", "-5", ""):
        with pytest.raises(WeightshopError, match="expected a size such as 24GB"):
            parse_gpu(bad)


def test_full_size_counts_come_from_the_meta_model(full):
    """KREA2.md: 12,820,073,036 parameters; krea-default targets = 232 Linears, 95.9 M LoRA parameters at rank 32."""
    counts = count_parameters(full, lora("krea-default", 32))
    assert counts.total == 12_820_073_036
    assert len(counts.lora_modules) == 232
    assert round(counts.lora / 1e5) == 959
    assert round(count_parameters(full, lora("attention", 32)).lora / 1e6) == 50  # KREA2.md: attention-only 50 M
    assert counts.quantizable_linears == 28 * 8  # q k v gate out + the MLP gate up down, in every block
    # Image tokens from the VAE scale and patch size: 1024 px -> (1024 / 16)^2.
    assert (full.vae_scale_factor, full.patch_size, full.max_sequence_length) == (8, 2, 512)
    assert full.image_tokens(1024, 1024) == 4096
    # Norms stay fp32 whatever the model dtype, as loading.py keeps them.
    assert base_weight_bytes(counts, "bf16") == 2 * counts.total + 2 * counts.fp32_kept


def test_quantized_base_bytes(full):
    counts = count_parameters(full, lora("krea-default", 32))
    bf16 = base_weight_bytes(counts, "bf16")
    blocks_bf16 = 2 * counts.quantizable
    fp8 = stored_bytes("fp8", counts.quantizable, counts.quantizable_linears, counts.quantizable_out_channels)
    nf4 = stored_bytes("nf4", counts.quantizable, counts.quantizable_linears, counts.quantizable_out_channels)
    assert fp8 / blocks_bf16 == pytest.approx(0.5, abs=1e-6)  # fp8 halves the blocks' bf16 bytes
    assert nf4 / blocks_bf16 == pytest.approx((0.5 + 4 / 64) / 2, abs=1e-6)  # 4 bits + an fp32 absmax per 64
    assert bf16 - base_weight_bytes(counts, "bf16", "fp8") == blocks_bf16 - fp8
    assert 0.5 < base_weight_bytes(counts, "bf16", "fp8") / bf16 < 0.55  # the rest stays bf16
    assert base_weight_bytes(counts, "bf16", "int8") > base_weight_bytes(counts, "bf16", "fp8")  # per-channel scales
    # fp8-mm: the same float8 bytes with int8's per-channel scales (measured on the H100 with the fp32 LoRA: 12.92 GiB)
    fp8_mm = stored_bytes("fp8-mm", counts.quantizable, counts.quantizable_linears, counts.quantizable_out_channels)
    assert fp8_mm - fp8 == 4 * (counts.quantizable_out_channels - counts.quantizable_linears)
    assert (base_weight_bytes(counts, "bf16", "fp8-mm") + 4 * counts.lora) / 2**30 == pytest.approx(12.923, rel=0.001)


def test_activation_formula_scales_as_it_should(full):
    base = run(model_dtype="bf16", batch_size=1)
    one = predict(base, full, 1024)
    two = predict(run(model_dtype="bf16", batch_size=2), full, 1024)
    assert two.parts["activations"] == 2 * one.parts["activations"]  # every term is per token
    assert two.parts["base weights"] == one.parts["base weights"]
    layers = full.config["num_layers"]
    blocks = one.activation_terms["transformer blocks"]
    ckpt = predict(run(model_dtype="bf16", checkpointing=True), full, 1024).activation_terms
    kept = ckpt["block inputs (checkpointed)"] + ckpt["one block recomputed in backward"]
    assert ckpt["one block recomputed in backward"] == blocks / layers  # uniform blocks
    assert layers / 2 < blocks / kept < layers  # checkpointing cuts block activations by ~the number of layers
    # 4x the pixels: the blocks' activations grow with the tokens (4096 + 512 vs 1024 + 512; no s^2 term).
    small = predict(base, full, 512).activation_terms["transformer blocks"]
    assert blocks / small == pytest.approx((4096 + 512) / (1024 + 512))
    # Autocast over an fp32 base keeps bf16 copies of the frozen weights; over a bf16 base it does not.
    assert activation_dtypes("fp32", "bf16").weight_casts and not activation_dtypes("bf16", "bf16").weight_casts
    fp32 = predict(run(model_dtype="fp32", autocast="bf16"), full, 512).activation_terms
    assert fp32["bf16 copies of frozen weights (autocast)"] == 2 * sum(count_parameters(
        full, lora("krea-default", 32)).block_linear_weights)


def test_full_size_against_the_published_h100_figure(full):
    """SimpleTuner, H100, bf16, 1024 px, batch 1: 33 GiB (31 GiB at 512 px). Checkpointed bf16 should land near."""
    cfg = run(model_dtype="bf16", checkpointing=True)
    assert 30 * GiB < predict(cfg, full, 1024).total < 37 * GiB
    assert 28 * GiB < predict(cfg, full, 512).total < 35 * GiB


def test_suggestions_are_re_predicted_and_stop_at_the_first_fit(full):
    gpu = parse_gpu("24GB")
    result = plan(run(model_dtype="fp32", batch_size=2), full, 1024, gpu_bytes=gpu)
    assert result.fits is False and result.suggestions
    tips = result.suggestions
    assert [t.change.split(" (")[0] for t in tips[:3]] == [
        "bf16 base weights", "gradient checkpointing", "batch 1 x 2 accumulation steps"]
    assert tips[0].sets == ["model.dtype=bf16"]
    assert "memory.gradient_checkpointing=true" in tips[1].sets
    primary = [t for t in tips if not t.change.startswith("or ")]
    assert all(a.total > b.total for a, b in zip(primary, primary[1:]))
    assert primary[-1].fits and not any(t.fits for t in primary[:-1])
    # Each row's total is the predictor's answer for that row's settings, not a guess.
    last = primary[-1]
    cfg = load_config(overrides=["data.manifest=m.json", "schedule.batch_size=2", *last.sets])
    assert predict(cfg, full, *last.resolution, gpu).total == last.total
    assert plan(run(model_dtype="bf16", checkpointing=True), full, 1024, gpu_bytes=parse_gpu("H100")).fits


def test_unknown_base_dtype_and_bad_size_are_explained(full):
    with pytest.raises(WeightshopError, match="memory.base_dtype"):
        predict(run(base_dtype="int3"), full, 1024)
    with pytest.raises(WeightshopError, match="multiple of 16"):
        predict(run(), full, 1000)


def test_shape_of_a_model_directory(tiny_dirs):
    from weightshop.models.loading import load_model
    from weightshop.train.targets import lora_parameter_count, resolve_targets

    shape = model_shape(str(tiny_dirs[0]))
    assert shape.vae_scale_factor == 4  # the tiny VAE is f4: never assume 8
    model = load_model(tiny_dirs[0], dtype="fp32").pipeline.transformer
    counts = count_parameters(shape, lora("krea-default", 4))
    assert counts.total == sum(p.numel() for p in model.parameters())
    names = resolve_targets(model, "krea-default")
    assert counts.lora == lora_parameter_count(model, names, 4) and len(counts.lora_modules) == len(names)


# --- the check against reality -------------------------------------------------------------------------

# (resolution, settings): krea2-nano's own size and 4x its tokens, batch 1 and 2, fp32 and bf16 + autocast, with and
# without gradient checkpointing, and an fp8 base. Tolerances: what lives between steps within 1 %; what the step
# adds (activations, grads, transients) within 15 % (seen: -7 % .. +8 %); the whole peak within 10 %.
# docs/memory.md has the full table.
CASES = [
    (64, run(model_dtype="fp32", rank=8)),
    (128, run(model_dtype="fp32", rank=8, batch_size=2)),
    (128, run(model_dtype="fp32", rank=8, batch_size=2, checkpointing=True)),
    (128, run(model_dtype="bf16", autocast="bf16", rank=8, checkpointing=True)),
    (128, run(model_dtype="bf16", base_dtype="fp8", rank=8)),
    # DoRA keeps the frozen and the LoRA outputs per adapted Linear (predicted 0.73 of the peak before that term)
    (128, run(model_dtype="fp32", rank=8, dora=True, grad_accum=2)),
]


@pytest.mark.parametrize("size,run", CASES, ids=lambda c: str(c) if isinstance(c, int) else
                         f"{c.model.dtype}-{c.memory.autocast}-{c.memory.base_dtype}-b{c.schedule.batch_size}"
                         f"-ckpt{int(c.memory.gradient_checkpointing)}{'-dora' if c.lora.dora else ''}")
def test_prediction_matches_a_measured_step(nano, size, run):
    measured = measure_training_step(nano, run, size)
    predicted = predict(run, nano, size)
    static = predicted.parts["base weights"] + predicted.parts["LoRA weights (fp32)"] + predicted.parts[
        "optimizer state"]
    step = predicted.allocated - static
    assert static == pytest.approx(measured["static"], rel=0.01)
    assert step == pytest.approx(measured["step_peak"], rel=0.15), (step / MiB, measured["step_peak"] / MiB)
    assert predicted.allocated == pytest.approx(measured["total"], rel=0.10)


# --- the command --------------------------------------------------------------------------------------


def test_cli_json_and_table(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["plan", "--preset", "low-vram-24gb", "--set", "memory.base_dtype=none",
                              "--gpu", "4090", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["fits"] is False and result["height"] == 1024 and result["lora_modules"] == 232
    assert result["suggestions"][-1]["fits"] and result["total"] == sum(result["parts"].values())
    config = tmp_path / "run.yaml"
    config.write_text("data: {manifest: set/dataset.json}\nmodel: {dtype: bf16}\n"
                      "memory: {gradient_checkpointing: true}\n")
    out = runner.invoke(app, ["plan", str(config), "--gpu", "H100", "--resolution", "512"])
    assert out.exit_code == 0, out.output
    assert "fits" in out.output and "512x512" in out.output
    out = runner.invoke(app, ["plan", "--gpu", "lots"])
    assert out.exit_code == 2 and "expected a size such as 24GB" in out.output
    out = runner.invoke(app, ["plan", "--model", "--json"])  # the size of the model the config names: krea2-nano
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["base_parameters"] < 20e6


def test_cli_step_flops_come_from_the_flop_model(full, nano):
    """`weightshop plan` counts a step with models.flops (the FLOP model `weightshop bench train` reports MFU with),
    and bounds its time by the card's dense peak only when --gpu names a card whose peak is known."""
    from weightshop.models import flops

    runner = CliRunner()
    out = runner.invoke(app, ["plan", "--gpu", "H100", "--resolution", "512", "--set", "schedule.batch_size=2",
                              "--set", "memory.gradient_checkpointing=true", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    step = flops.training_step_flops(full.config, full.image_tokens(512, 512), full.max_sequence_length, 2, True)
    assert result["image_tokens"] == 1024 and result["text_tokens"] == full.max_sequence_length == 512
    assert result["step_flops"] == step and result["tflop_per_step"] == pytest.approx(step / 1e12)
    peak = flops.peak_tflops("H100")
    assert result["peak_tflops"] == {"bf16": peak} and peak == 989.0
    assert result["flop_lower_bound_s_per_step"] == {"bf16": pytest.approx(step / (peak * 1e12), rel=1e-12)}

    # krea2-nano (--model: the model the config names), checkpointing off by default, a bare size: no bound
    out = runner.invoke(app, ["plan", "--model", "--gpu", "24GB", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    step = flops.training_step_flops(nano.config, nano.image_tokens(nano.default_size, nano.default_size),
                                     nano.max_sequence_length, 1, False)
    assert result["step_flops"] == step
    assert result["peak_tflops"] is None and result["flop_lower_bound_s_per_step"] is None

    text = runner.invoke(app, ["plan", "--gpu", "H100", "--set", "memory.gradient_checkpointing=true"])
    assert text.exit_code == 0, text.output
    assert "compute (models.flops)" in text.output and "FLOP-limited lower bound on H100" in text.output
    text = runner.invoke(app, ["plan", "--gpu", "24GB"])
    assert text.exit_code == 0 and "no FLOP-limited bound" in text.output


def test_fp8_matmul_base_gets_an_fp8_bound_too(full):
    from weightshop.models import flops
    from weightshop.models.flops import card_peaks

    result = plan(run(base_dtype="fp8-mm", checkpointing=True), full, 1024, gpu="H100")
    step = flops.training_step_flops(full.config, 4096, 512, 1, True)
    assert result.step_flops == step
    assert result.flop_lower_bound_s_per_step == pytest.approx(
        {"bf16": step / (flops.peak_tflops("H100") * 1e12), "fp8": step / (flops.peak_tflops("H100", True) * 1e12)})
    assert plan(run(checkpointing=True), full, 1024, gpu="H100").flop_lower_bound_s_per_step.keys() == {"bf16"}
    # Only a card name gets a peak: a size, even one that contains a card's number, does not.
    assert card_peaks("rtx4090") == {"bf16": flops.peak_tflops("4090")}
    for size in ("24GB", "80", "5090MiB", None):
        assert card_peaks(size) is None


def test_prediction_matches_the_recorded_full_size_gpu_peaks():
    """docs/benchmarks/gpu-train-h200.json: the trainer's step on full-size Krea 2 (random weights) on an H200,
    written by experiments/gpu_check.sh. The plan must predict each allocator peak within 5 %."""
    import json
    from pathlib import Path


    record = json.loads((Path(__file__).parents[2] / "docs" / "benchmarks" / "gpu-train-h200.json").read_text())
    rows = [r for r in record["rows"] if "peak_gib" in r and not r["compile"]]
    assert len(rows) == 6
    shape = full_size_shape()
    for r in rows:
        settings = run(model_dtype="bf16", autocast="bf16", base_dtype="none" if r["base"] == "bf16" else r["base"],
                               checkpointing=r["checkpointing"], rank=r["rank"], targets=r["targets"],
                               batch_size=r["batch_size"])
        predicted = predict(settings, shape, r["resolution"]).allocated / 2**30
        assert predicted == pytest.approx(r["peak_gib"], rel=0.05), r


def test_prediction_matches_the_recorded_h100_peaks_of_the_float8_matmul_base():
    """docs/benchmarks/gpu-train-h100.json, run 2 (experiments/gpu_check.sh on an H100): the bf16 and fp8-mm bases at
    1024 px; fp8-mm keeps no upcast weight for backward, which the plan must see (predicted lower than fp8)."""
    import json
    from pathlib import Path


    record = json.loads((Path(__file__).parents[2] / "docs" / "benchmarks" / "gpu-train-h100.json").read_text())
    rows = [r for r in record["runs"][1]["report"]["rows"] if not r["compile"]]
    assert {r["base"] for r in rows} == {"bf16", "fp8-mm"}
    shape = full_size_shape()
    predicted = {}
    for base in ("none", "fp8", "fp8-mm"):
        settings = run(model_dtype="bf16", autocast="bf16", base_dtype=base, checkpointing=True, rank=32,
                               targets="krea-default", batch_size=1)
        predicted[base] = predict(settings, shape, 1024).allocated / 2**30
    for r in rows:
        assert predicted["none" if r["base"] == "bf16" else r["base"]] == pytest.approx(r["peak_gib"], rel=0.05), r
    assert predicted["fp8-mm"] < predicted["fp8"] - 0.5


# --- one config the whole way --------------------------------------------------------------------------


def test_plan_calibration_and_the_trainer_build_the_same_run_for_dora_with_accumulation(
        tiny_dirs, tmp_path, monkeypatch):
    """`weightshop plan` counts, its calibration step measures and the trainer trains one TrainConfig: a DoRA run with
    gradient accumulation gets the same adapted modules and DoRA magnitudes in all three, and the measured step takes
    grad_accum micro-batches as the trainer does (it used to measure a plain LoRA with one micro-batch)."""
    from weightshop.models.loading import load_transformer, resolve_source
    from weightshop.train import step as step_module
    from weightshop.train.setup import prepare
    from weightshop.train.synthetic import trainer_step

    cfg = run(model_dtype="fp32", dora=True, grad_accum=3, rank=4, targets="attention")
    shape = model_shape(str(tiny_dirs[0]))
    trained = prepare(load_transformer(resolve_source(str(tiny_dirs[0]))), cfg, "cpu")  # what `train` runs
    measured = trainer_step(cfg, shape.config, 32, vae_scale=shape.vae_scale_factor, text_tokens=8)
    counted = count_parameters(shape, cfg)

    def adapter(model):
        return {n.replace(".weightshop", ""): tuple(p.shape) for n, p in model.named_parameters() if "lora_" in n}

    assert adapter(trained.model) == adapter(measured.model)
    assert any("lora_magnitude_vector" in n for n in adapter(measured.model))  # DoRA, not plain LoRA
    assert counted.lora == sum(p.numel() for p in measured.params) == sum(p.numel() for p in trained.params)
    assert list(counted.lora_modules) == sorted(measured.names) == sorted(trained.names)

    calls = []
    real = step_module.flow_matching_loss
    monkeypatch.setattr(step_module, "flow_matching_loss", lambda *a, **k: calls.append(a[5]) or real(*a, **k))
    measured()
    assert calls == [0, 1, 2]  # the micro-batches of one optimizer step
    assert predict(cfg, shape, 32).settings["dora"] and predict(cfg, shape, 32).lora_parameters == counted.lora
