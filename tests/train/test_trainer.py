"""LoRA training: config errors, targets, the objective from the cache, exact resume, kill -9, output file."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from weightshop.data import check_dataset, write_manifest
from weightshop.errors import WeightshopError
from weightshop.train import load_config, train
from weightshop.train.targets import lora_parameter_count, resolve_targets


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("set")
    src = root / "photos"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src / f"i{i}.png")
        (src / f"i{i}.txt").write_text(f"a red star number {i}")
    manifest = check_dataset(src, target_area=32 * 32, multiple=8, ocr=False)
    return write_manifest(manifest, root / "dataset.json")


def config(tiny_dirs, manifest_path, out, **sets):
    base = {"model": {"raw": str(tiny_dirs[0]), "turbo": str(tiny_dirs[1])},
            "data": {"manifest": str(manifest_path), "caption_dropout": 0.2},
            "lora": {"rank": 4, "targets": "attention"},
            "schedule": {"steps": 4, "batch_size": 2},
            "output": {"dir": str(out), "save_every": 1, "keep_last": 2}}
    return load_config(base=base, overrides=[f"{k}={v}" for k, v in sets.items()])


# --- config ------------------------------------------------------------------------------------------


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {manifest: m.json}\nlora: {rnak: 8}\n")
    with pytest.raises(WeightshopError, match="unknown key 'lora.rnak'"):
        load_config(path)
    with pytest.raises(WeightshopError, match="optim.lr: Input should be greater than 0"):
        load_config(overrides=["data.manifest=m.json", "optim.lr=-1"])
    with pytest.raises(WeightshopError, match="schedule.timesteps"):
        load_config(overrides=["data.manifest=m.json", "schedule.timesteps=cosmic"])
    with pytest.raises(WeightshopError, match="unknown preset 'huge'"):
        load_config(preset="huge")
    with pytest.raises(WeightshopError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(WeightshopError, match="lora.dora needs the base in full precision .* memory.base_dtype is 'fp8'"):
        load_config(overrides=["data.manifest=m.json", "lora.dora=true", "memory.base_dtype=fp8"])


def test_presets_overrides_and_alpha_default():
    cfg = load_config(preset="low-vram-24gb", overrides=["data.manifest=m.json", "lora.rank=8"])
    assert cfg.memory.gradient_checkpointing and cfg.schedule.grad_accum == 4
    assert cfg.lora.rank == 8 and cfg.lora.alpha == 8.0  # alpha follows rank: scale 1 everywhere
    assert load_config(preset="style", overrides=["data.manifest=m"]).optim.lr == 5e-4


# --- targets -----------------------------------------------------------------------------------------


def test_overrides_never_edit_a_preset_or_the_callers_base():
    from weightshop.train.config import PRESETS

    base = {"data": {"manifest": "x.json"}, "schedule": {"steps": 600, "seed": 0}}
    first = load_config(base=base, overrides=["schedule.seed=2", "data.caption_dropout=0.3"])
    second = load_config(base=base)
    assert (first.schedule.seed, first.data.caption_dropout) == (2, 0.3)
    assert (second.schedule.seed, second.data.caption_dropout) == (0, 0.1)
    assert base == {"data": {"manifest": "x.json"}, "schedule": {"steps": 600, "seed": 0}}
    load_config(overrides=["lora.rank=8", "data.manifest=x.json"], preset="style")
    assert load_config(base=base, preset="style").lora.rank == PRESETS["style"]["lora"]["rank"] == 32


def test_the_loss_is_the_weighted_velocity_error_at_the_sampled_timesteps(tmp_path):
    from types import SimpleNamespace

    from weightshop.models.latents import pack_latents
    from weightshop.models.schedule import loss_weights
    from weightshop.train.step import flow_matching_loss

    g = torch.Generator().manual_seed(0)
    files = ["a", "b", "c", "d"]
    cached = SimpleNamespace(latents={f: torch.randn(4, 8, 8, generator=g) for f in files},
                             embeds={f: (torch.randn(6, 2, 8, generator=g), torch.ones(6, dtype=torch.bool))
                                     for f in files},
                             empty=(torch.zeros(6, 2, 8), torch.ones(6, dtype=torch.bool)))
    seen = {}

    def transformer(xt, embeds, s, ids, mask, return_dict):  # predicts v = 0: the loss is |v|^2 per sample
        seen["s"], seen["xt"] = s, xt
        return (torch.zeros_like(xt),)

    losses = {}
    for kind in ("none", "cosmap", "min_snr"):
        cfg = load_config(base={"data": {"manifest": "unused.json"}}, overrides=[f"schedule.loss_weighting={kind}"])
        losses[kind] = flow_matching_loss(transformer, cached, files, cfg, step=3, micro=0).item()
    s = seen["s"]  # the same timesteps and noise for every weighting: they come from (seed, step, micro)
    x0 = pack_latents(torch.stack([cached.latents[f] for f in files]))
    noise = (seen["xt"] - (1 - s.view(-1, 1, 1)) * x0) / s.view(-1, 1, 1)
    per_sample = (noise - x0).pow(2).flatten(1).mean(1)
    for kind, value in losses.items():
        assert value == pytest.approx((loss_weights(s, kind) * per_sample).mean().item(), rel=1e-5), kind
    assert losses["min_snr"] < losses["none"]  # min-SNR weights lie in (0, 1]
    with pytest.raises(WeightshopError, match="schedule.loss_weighting"):
        load_config(base={"data": {"manifest": "x.json"}}, overrides=["schedule.loss_weighting=snr"])


def test_krea_default_targets_on_the_full_model():
    from accelerate import init_empty_weights
    from diffusers import Krea2Transformer2DModel

    with init_empty_weights():
        full = Krea2Transformer2DModel()
    names = resolve_targets(full, "krea-default")
    assert len(names) == 232  # the figure diffusers' example trainer reports for Krea 2
    assert round(lora_parameter_count(full, names, 32) / 1e6, 1) == 95.9
    attention = resolve_targets(full, "attention")
    assert len(attention) == 5 * (28 + 4)
    assert len(resolve_targets(full, "attention", text_fusion=False)) == 5 * 28


def test_explicit_targets_that_match_nothing(tiny_raw):
    with pytest.raises(WeightshopError, match=r"\['attn.wq'\] match no Linear"):
        resolve_targets(tiny_raw.pipeline.transformer, ["to_q", "attn.wq"])
    with pytest.raises(WeightshopError, match="unknown target set"):
        resolve_targets(tiny_raw.pipeline.transformer, "everything")


# --- training ----------------------------------------------------------------------------------------


def test_training_writes_a_lora_that_loads_everywhere(tiny_dirs, manifest_path, tmp_path):
    result = train(config(tiny_dirs, manifest_path, tmp_path / "run"))
    assert result["step"] == 4 and result["verified_on"]["checkpoint"] == "turbo"
    assert result["verified_on"]["modules_injected"] == result["modules"] == 5 * 4
    with safe_open(result["lora"], "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    info = json.loads(meta["weightshop"])
    assert info["rank"] == info["alpha"] == 4 and info["steps"] == 4 and len(info["base_sha256"]) == 64
    assert json.loads(meta["lora_adapter_metadata"])["transformer.lora_alpha"] == 4.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(np.isfinite(json.loads(l)["loss"]) for l in lines)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-0000003", "step-0000004"]


def test_a_dora_run_saves_magnitudes_that_load_everywhere(tiny_dirs, manifest_path, tmp_path):
    from weightshop.lora import load_canonical

    result = train(config(tiny_dirs, manifest_path, tmp_path / "run", **{"lora.dora": "true", "lora.alpha": 8,
                                                                           "optim.lr": 1e-2}))
    assert result["verified_on"]["modules_injected"] == result["modules"] == 5 * 4  # reloaded into Turbo as DoRA
    canon = load_canonical(result["lora"])
    assert all(m.is_dora and m.alpha == m.rank for m in canon.modules.values())
    with safe_open(result["lora"], "pt") as f:
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.use_dora"] is True
    # the magnitudes trained: they left their start, the rows' norms of Raw's weights
    from weightshop.models.loading import load_model

    layers = dict(load_model(tiny_dirs[0], dtype="fp32").pipeline.transformer.named_modules())
    moved = [float((m.magnitude - layers[n].weight.detach().norm(dim=1)).abs().max()) for n, m in canon.modules.items()]
    assert max(moved) > 1e-3


def test_alpha_is_folded_into_lora_b(tiny_dirs, manifest_path, tmp_path):
    a = train(config(tiny_dirs, manifest_path, tmp_path / "a", **{"lora.alpha": 4}))
    b = train(config(tiny_dirs, manifest_path, tmp_path / "b", **{"lora.alpha": 8}))
    with safe_open(a["lora"], "pt") as fa, safe_open(b["lora"], "pt") as fb:
        key = next(k for k in fa.keys() if ".lora_B." in k)
        meta_b = json.loads(fb.metadata()["weightshop"])
        assert meta_b["alpha"] == 4.0 and meta_b["alpha_folded_from"] == 8.0
        assert fb.get_tensor(key).abs().sum() > 0 and not torch.equal(fa.get_tensor(key), fb.get_tensor(key))


def test_interrupted_and_resumed_equals_uninterrupted(tiny_dirs, manifest_path, tmp_path):
    straight = train(config(tiny_dirs, manifest_path, tmp_path / "straight"))
    cfg = config(tiny_dirs, manifest_path, tmp_path / "resumed")
    assert train(cfg, stop_after=2)["step"] == 2
    resumed = train(cfg)
    la = [json.loads(l)["loss"] for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-6, abs=1e-7)
    ea, eb = ([json.loads(l)["loss_ema"] for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("straight", "resumed"))
    assert ea == pytest.approx(eb, rel=1e-6, abs=1e-7)  # the loss EMA carries on across the resume too
    with safe_open(straight["lora"], "pt") as fa, safe_open(resumed["lora"], "pt") as fb:
        assert all(torch.allclose(fa.get_tensor(k), fb.get_tensor(k), atol=1e-7) for k in fa.keys())


def test_resume_with_a_changed_config_is_refused(tiny_dirs, manifest_path, tmp_path):
    train(config(tiny_dirs, manifest_path, tmp_path / "run"), stop_after=1)
    changed = config(tiny_dirs, manifest_path, tmp_path / "run", **{"optim.lr": 1e-2, "lora.rank": 4})
    with pytest.raises(WeightshopError, match=r"optim.lr: 0.0005 -> 0.01"):
        train(changed)
    # fields that do not change what is learned may change
    assert train(config(tiny_dirs, manifest_path, tmp_path / "run", **{"output.keep_last": 5}), stop_after=2)["step"] == 2


def test_resume_onto_a_changed_dataset_is_refused(tiny_dirs, manifest_path, tmp_path):
    """The manifest path is in the config, its content is not: excluding an image must not resume silently."""
    from weightshop.data import exclude_items, read_manifest, write_manifest

    edited = tmp_path / "set" / "dataset.json"
    manifest = read_manifest(manifest_path)
    write_manifest(manifest, edited)
    train(config(tiny_dirs, edited, tmp_path / "run"), stop_after=2)
    exclude_items(manifest, ["i0.png"], why="off-brand")
    write_manifest(manifest, edited)
    with pytest.raises(WeightshopError, match=r"dataset: the manifest's content changed \(sha256 \w{12} -> \w{12}\)"):
        train(config(tiny_dirs, edited, tmp_path / "run"))
    assert train(config(tiny_dirs, edited, tmp_path / "run"), force=True, stop_after=3)["step"] == 3


def test_a_finished_run_reports_its_last_loss_ema(tiny_dirs, manifest_path, tmp_path):
    first = train(config(tiny_dirs, manifest_path, tmp_path / "run"))
    again = train(config(tiny_dirs, manifest_path, tmp_path / "run"))  # nothing left to do: loads and reports
    assert again["step"] == 4 and again["loss_ema"] == pytest.approx(first["loss_ema"]) and again["lora"]
    assert again["loss_ema"] == json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["loss_ema"]


def test_kill_9_leaves_a_resumable_run(tiny_dirs, manifest_path, tmp_path):
    run = tmp_path / "run"
    overrides = [f"--set=model.raw={tiny_dirs[0]}", f"--set=model.turbo={tiny_dirs[1]}",
                 f"--set=data.manifest={manifest_path}", "--set=lora.rank=4", "--set=lora.targets=attention",
                 "--set=schedule.steps=400", "--set=schedule.batch_size=2", f"--set=output.dir={run}",
                 "--set=output.save_every=1"]
    proc = subprocess.Popen([sys.executable, "-m", "weightshop.cli.main", "train", *overrides],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "latest.json").exists():
        time.sleep(0.1)
    time.sleep(0.5)  # somewhere inside a later step or checkpoint write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert 1 <= latest["step"] < 400
    result = train(load_config(overrides=[o.removeprefix("--set=") for o in overrides]
                               + ["schedule.steps=400"]), stop_after=latest["step"] + 2)
    assert result["step"] == latest["step"] + 2
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, latest["step"] + 3))  # no step logged twice


def test_validation_renders_with_the_saved_lora_on_raw_and_turbo(tiny_dirs, manifest_path, tmp_path):
    cfg = config(tiny_dirs, manifest_path, tmp_path / "run", **{"validation.every": 2,
                                                               "validation.prompts": "[a red star, a blue star]",
                                                               "validation.seeds": "[0, 1]"})
    result = train(cfg)
    steps = [v["step"] for v in result["validation"]]
    assert steps == [2, 4]
    for v in result["validation"]:
        assert v["raw"]["images"] == v["turbo"]["images"] == 4 and v["turbo"]["modules"] == 20
        assert (tmp_path / "run" / "validation").exists() and v["grid"].endswith("grid.png")
    assert (tmp_path / "run" / "validation" / "step-0000002" / "lora.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "validation.json").read_text())[-1]["step"] == 4
