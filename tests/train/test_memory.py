"""Training memory options: a frozen base stored in fp8 / int8, TensorBoard, and data parallel under accelerate."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from weightshop.errors import WeightshopError
from weightshop.train import train
from weightshop.quant.layers import weight_bytes
from weightshop.train.memory import store_base

from tests.train.test_trainer import config, manifest_path  # noqa: F401  (fixture)


def _block_linear_bytes(transformer) -> int:
    return sum(weight_bytes(m) for n, m in transformer.named_modules()
               if n.startswith("transformer_blocks.") and isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("base, ratio", [("fp8", 4), ("int8", 4)])
def test_low_precision_base_stores_only_the_blocks_smaller(tiny_dirs, base, ratio):
    from weightshop.models.loading import load_transformer, resolve_source

    model = load_transformer(resolve_source(str(tiny_dirs[0]), None, "raw"))
    blocks, outside = _block_linear_bytes(model), weight_bytes(model.img_in)
    store_base(model, base, torch.float32)
    # fp32 -> 1 byte per weight (+ int8's per-channel scales: 1/in_features extra, 12 % at width 32)
    assert _block_linear_bytes(model) <= blocks / ratio * 1.15
    assert weight_bytes(model.img_in) == outside
    assert model.img_in.weight.dtype == torch.float32


def test_nf4_on_cpu_and_an_unknown_base_are_refused(tiny_dirs):
    from weightshop.models.loading import load_transformer, resolve_source

    model = load_transformer(resolve_source(str(tiny_dirs[0]), None, "raw"))
    if not torch.cuda.is_available():
        with pytest.raises(WeightshopError, match="nf4 needs bitsandbytes on a CUDA GPU"):
            store_base(model, "nf4", torch.float32)
    with pytest.raises(WeightshopError, match="expected one of none, fp8, fp8-mm, int8, nf4"):
        store_base(model, "fp4", torch.float32)


@pytest.mark.parametrize("base", ["fp8", "fp8-mm", "int8"])
def test_training_on_a_low_precision_base_tracks_the_full_precision_run(tiny_dirs, manifest_path, tmp_path, base):
    full = train(config(tiny_dirs, manifest_path, tmp_path / "full"))
    low = train(config(tiny_dirs, manifest_path, tmp_path / base, **{"memory.base_dtype": base}))
    lf = [json.loads(l)["loss"] for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    ll = [json.loads(l)["loss"] for l in (tmp_path / base / "metrics.jsonl").read_text().splitlines()]
    # same batches, same noise: only the base weights' rounding differs
    assert ll == pytest.approx(lf, rel=0.1)
    assert ll != lf
    assert low["base"]["bytes_after"] < 0.8 * low["base"]["bytes_before"]  # tiny: embedders are a big share
    # the LoRA is trained in fp32 and loads into a full-precision Turbo like any other
    assert low["verified_on"]["modules_injected"] == full["modules"]
    with safe_open(low["lora"], "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())


def test_tensorboard_logs_the_same_scalars_and_resume_does_not_duplicate(tiny_dirs, manifest_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = config(tiny_dirs, manifest_path, tmp_path / "run", **{"output.tensorboard": True})
    train(cfg, stop_after=2)
    train(cfg)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(logged) == [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [logged[r["step"]] for r in rows] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


def test_two_processes_under_accelerate_equal_one_process_with_accumulation(tiny_dirs, manifest_path, tmp_path):
    common = [f"model.raw={tiny_dirs[0]}", f"model.turbo={tiny_dirs[1]}", f"data.manifest={manifest_path}",
              "lora.rank=4", "lora.targets=attention", "schedule.steps=3", "schedule.batch_size=1",
              "data.caption_dropout=0.2"]
    one = train(config(tiny_dirs, manifest_path, tmp_path / "one",
                       **{"schedule.batch_size": 1, "schedule.steps": 3, "schedule.grad_accum": 2}))
    sets = [f"--set={s}" for s in common + ["schedule.grad_accum=1", f"output.dir={tmp_path / 'two'}"]]
    # accelerate's --multi_gpu launcher (torchrun) on a machine without CUDA runs MULTI_CPU over gloo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "weightshop.cli.main", "train", *sets, "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["processes"] == 2 and result["step"] == 3
    with safe_open(one["lora"], "pt") as fa, safe_open(result["lora"], "pt") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for k in fa.keys():
            assert torch.allclose(fa.get_tensor(k), fb.get_tensor(k), atol=1e-6), k


def test_bench_train_measures_every_base_with_ratios_to_the_first(tmp_path):
    from typer.testing import CliRunner

    from weightshop.cli.main import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "train", "--resolutions", "32", "--bases", "bf16,fp8,fp8-mm",
                                      "--text-tokens", "4", "--steps", "1", "--warmup", "0", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = {r["base"]: r for r in report["rows"]}
    assert rows["bf16"]["ratio"] == 1.0 and rows["fp8"]["ratio"] > 0
    assert rows["fp8"]["base_gib"] < rows["bf16"]["base_gib"]  # the blocks stored in one byte, not two
    assert rows["fp8-mm"]["base_gib"] < rows["bf16"]["base_gib"]
    assert {r["text_tokens"] for r in rows.values()} == {4}
    assert all(r["grad_norm"] > 0 and r["loss_finite"] for r in rows.values())  # the LoRA really trains


def test_fp8_linear_is_the_scaled_float8_weight_and_beats_an_unscaled_cast():
    from weightshop.quant.layers import FP8_MAX, Float8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight.mul_(0.05)  # typical trained weights: mostly below float8's normal range (2^-6)
    x = torch.randn(8, 64)
    reference, w = linear(x), linear.weight.detach().clone()
    unscaled = torch.nn.functional.linear(x, w.to(torch.float8_e4m3fn).float(), linear.bias)
    fp8 = Float8Linear.convert(linear, torch.float32)
    assert fp8.weight.dtype == torch.float8_e4m3fn and not fp8.weight.requires_grad
    assert fp8.weight_scale.item() == pytest.approx(w.abs().max().item() / FP8_MAX)
    assert fp8.weight.float().abs().max().item() == pytest.approx(FP8_MAX)  # the amax lands on float8's max
    err = ((fp8(x) - reference).norm() / reference.norm()).item()
    assert err < 0.03 and err < ((unscaled - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("base", ["fp8", "fp8-mm"])
def test_an_fp8_base_trains_under_checkpointing_and_regional_compile(base):
    """The combination the H200 check failed on (CheckpointError: recomputed float8 vs saved bf16), and the
    float8-matmul base that met the H100 goal with it (docs/benchmarks.md)."""
    from weightshop.bench.train_step import measure
    from weightshop.models.shape import model_shape

    row = measure(32, base, config=model_shape("krea2-nano").config, device="cpu", steps=1, warmup=1, rank=4, checkpointing=True,
                  compile=True, vae_scale=4, text_tokens=8)
    assert row["loss_finite"] and row["grad_norm"] > 0


def test_row_quantization_puts_each_rows_amax_on_float8s_max_within_its_rounding():
    from weightshop.quant.layers import FP8_MAX, quantize_rows

    torch.manual_seed(0)
    x = torch.randn(16, 64) * torch.logspace(-4, 2, 16).unsqueeze(1)  # rows six decades apart
    q, scale = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (16, 1)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((16,), FP8_MAX))
    back = q.float() * scale
    normal = x.abs() >= scale * 2.0**-6  # float8_e4m3fn's normal range, in each row's scale
    rel = ((back - x).abs() / x.abs())[normal]
    assert rel.max().item() <= 2.0**-4 + 1e-6  # 3 mantissa bits: half an ulp is 2^-4 relative


def test_fp8_matmul_linear_is_the_row_scaled_float8_product_forward_and_backward():
    from weightshop.quant.layers import FP8_MAX, Float8MatmulLinear, quantize_rows

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.mul_(torch.logspace(-2, 0, 48).unsqueeze(1))  # output channels of very different size
    x = torch.randn(3, 10, 64, requires_grad=True)
    reference = linear(x)
    g = torch.randn_like(reference)
    reference.backward(g)
    grad_reference, x.grad = x.grad, None
    w = linear.weight.detach().clone()

    fp8 = Float8MatmulLinear.convert(linear, torch.float32)
    assert fp8.weight.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (48, 1)
    assert torch.allclose(fp8.weight_scale, w.abs().amax(dim=1, keepdim=True) / FP8_MAX)  # one per channel
    y = fp8(x)
    y.backward(g)

    # exactly the product of the float8 values and their scales (bf16 output rounding aside)
    qx, sx = quantize_rows(x.detach().reshape(-1, 64))
    wq, sw = fp8.weight.float(), fp8.weight_scale
    expected = (qx.float() * sx) @ (wq * sw).T + linear.bias.detach()
    assert torch.allclose(y.detach().reshape(-1, 48), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())
    qg, sg = quantize_rows(g.reshape(-1, 48) * sw.reshape(1, -1))  # W's scales folded into the gradient
    expected_grad = (qg.float() * sg) @ wq
    assert torch.allclose(x.grad.reshape(-1, 64), expected_grad, rtol=1e-2,
                          atol=1e-2 * expected_grad.abs().max().item())
    # and close to the full-precision layer; per-channel scales keep the small channels precise
    err = lambda a, b: ((a - b).norm() / b.norm()).item()
    assert err(y.detach(), reference.detach()) < 0.05 and err(x.grad, grad_reference) < 0.06
    small = slice(0, 8)  # the channels 100x smaller than the largest
    assert err(y.detach()[..., small], reference.detach()[..., small]) < 0.05


def test_the_base_moves_to_the_device_a_block_at_a_time_each_stored_low_before_the_next(tiny_dirs, monkeypatch):
    """A 12.8 B base fits 24 GB only quantized: it must never be on the GPU whole in bf16."""
    import weightshop.train.memory as memory
    from weightshop.models.loading import load_transformer, resolve_source

    model = load_transformer(resolve_source(str(tiny_dirs[0]), None, "raw"))
    seen, store_block = [], memory._store_block

    def spy(block, prefix, base_dtype, compute_dtype):
        # when a block is stored, it is on the device and the blocks after it are not yet
        seen.append([next(b.parameters()).device.type for b in model.transformer_blocks])
        store_block(block, prefix, base_dtype, compute_dtype)

    monkeypatch.setattr(memory, "_store_block", spy)
    store_base(model, "fp8-mm", torch.float32, device="meta")
    n = len(model.transformer_blocks)
    assert seen == [["meta"] * (i + 1) + ["cpu"] * (n - i - 1) for i in range(n)]
    assert all(p.device.type == "meta" for p in model.parameters())  # and then the rest follows


def test_fp8_mm_on_a_gpu_without_float8_tensor_cores_is_refused_naming_fp8(tiny_dirs, monkeypatch):
    from weightshop.models.loading import load_transformer, resolve_source

    model = load_transformer(resolve_source(str(tiny_dirs[0]), None, "raw"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(WeightshopError, match="fp8-mm multiplies in float8, which NVIDIA GeForce RTX 3090 cannot.*"
                                              "use memory.base_dtype: fp8"):
        store_base(model, "fp8-mm", torch.bfloat16, device="cuda")
    assert all(p.device.type == "cpu" for p in model.parameters())  # refused before anything moved
