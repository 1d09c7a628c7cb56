"""LoRA arithmetic: merge equals applying, extract recovers, resize keeps the energy it reports, combine adds."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from weightshop.cli.main import app
from weightshop.errors import WeightshopError
from weightshop.generate import GenerateRequest, generate
from weightshop.lora import LoraRequest, apply_loras, load_canonical, save_canonical
from weightshop.lora.ops import combine, combine_files, extract_file, merge_file, resize, resize_file
from weightshop.models.latents import position_ids
from weightshop.models.loading import load_model
from tests.lora.test_formats import make_lora


@pytest.fixture(scope="module")
def lora_files(tiny_dirs, tmp_path_factory):
    """Two LoRAs on the tiny transformer (mixed ranks 4 / 2, alpha != rank), in kohya and comfyui layouts."""
    model = load_model(tiny_dirs[0], dtype="fp32")
    root = tmp_path_factory.mktemp("ops")
    a = save_canonical(make_lora(model.pipeline.transformer, seed=1), root / "a.safetensors", "kohya")
    b = save_canonical(make_lora(model.pipeline.transformer, seed=2, alpha_factor=0.5), root / "b.safetensors", "comfyui")
    return a, b


def transformer_out(transformer) -> torch.Tensor:
    """One forward pass of the transformer on fixed inputs (compares weights through their effect)."""
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 16, generator=g), torch.randn(1, 8, 3, 32, generator=g)
    with torch.no_grad():
        return transformer(x, text, torch.tensor([0.6]), position_ids(8, 4, 4), torch.ones(1, 8, dtype=torch.bool),
                           return_dict=False)[0]


def pixels(model, loras=()):
    req = GenerateRequest(prompts=["a red circle"], seeds=[1], steps=2, loras=list(loras))
    return np.asarray(generate(model, req)[0].image, dtype=np.float64) / 255


def test_merge_then_generate_equals_lora_applied(tiny_dirs, lora_files, tmp_path):
    a, b = lora_files
    applied = load_model(tiny_dirs[0], dtype="fp32")
    base_out = transformer_out(applied.pipeline.transformer)
    with_lora = pixels(applied, [LoraRequest(a, 0.8), LoraRequest(b, -0.5)])
    want = transformer_out(applied.pipeline.transformer)
    assert (want - base_out).abs().max() > 0.1

    result = merge_file([LoraRequest(a, 0.8), LoraRequest(b, -0.5)], tiny_dirs[0], tmp_path / "merged")
    merged = load_model(tmp_path / "merged", dtype="fp32")
    assert merged.checkpoint.name == "raw" and merged.name.endswith("+merged")
    assert (tmp_path / "merged" / "vae").is_dir() and result["loras"][1]["strength"] == -0.5
    torch.testing.assert_close(transformer_out(merged.pipeline.transformer), want, atol=1e-5, rtol=1e-5)
    assert np.abs(pixels(merged) - with_lora).max() <= 2 / 255  # fp32 rounding may flip a pixel level

    single = merge_file([LoraRequest(a, 0.8), LoraRequest(b, -0.5)], tiny_dirs[0], tmp_path / "merged.safetensors",
                        layout="single-file")
    with safe_open(single["path"], "pt") as f:
        assert "blocks.0.attn.wq.weight" in f.keys() and json.loads(f.metadata()["weightshop_merge"])["loras"]
    from_file = load_model(tmp_path / "merged.safetensors", components=tiny_dirs[0], dtype="fp32")
    a_state, b_state = from_file.pipeline.transformer.state_dict(), merged.pipeline.transformer.state_dict()
    assert a_state.keys() == b_state.keys() and all(torch.equal(a_state[k], b_state[k]) for k in a_state)
    with pytest.raises(WeightshopError, match="already exists"):
        merge_file([LoraRequest(a)], tiny_dirs[0], tmp_path / "merged")


def test_extract_from_a_merged_checkpoint_recovers_the_lora(tiny_dirs, lora_files, tmp_path):
    a, _ = lora_files
    merge_file([LoraRequest(a, 1.0)], tiny_dirs[0], tmp_path / "merged")
    result = extract_file(tmp_path / "merged", tiny_dirs[0], tmp_path / "x.safetensors", rank=4)
    truth, got = load_canonical(a), load_canonical(result["path"])
    assert set(got.modules) == set(truth.modules) and result["unchanged_modules"] == 0
    assert result["max_relative_error"] < 1e-3 and result["not_representable"] == []
    for name, m in truth.modules.items():
        d = m.delta()
        assert float(torch.linalg.matrix_norm(got.modules[name].delta() - d) / torch.linalg.matrix_norm(d)) < 1e-3, name
    # Below the true rank the error is real and reported honestly.
    low = extract_file(tmp_path / "merged", tiny_dirs[0], tmp_path / "x1.safetensors", rank=1)
    q = next(r for r in low["modules"] if r["module"] == "transformer_blocks.0.attn.to_q")
    s = torch.linalg.svdvals(truth.modules["transformer_blocks.0.attn.to_q"].delta().double())
    assert q["relative_error"] == pytest.approx(float((s[1:] ** 2).sum().sqrt() / (s ** 2).sum().sqrt()), rel=1e-3)
    with pytest.raises(WeightshopError, match="identical Linear weights"):
        extract_file(tiny_dirs[0], tiny_dirs[0], tmp_path / "none.safetensors", rank=4)


def test_resize_keeps_the_energy_it_reports(lora_files, tmp_path):
    a, _ = lora_files
    canon = load_canonical(a)
    small, report = resize(canon, rank=2)
    rows = {r["module"]: r for r in report["modules"]}
    kept_all = total_all = 0.0
    for name, m in canon.modules.items():
        d = (m.up.double() @ m.down.double()) * m.scale
        s = torch.linalg.svdvals(d)
        kept, total = float((s[:2] ** 2).sum()), float((s ** 2).sum())
        assert rows[name]["energy_kept"] == pytest.approx(kept / total, rel=1e-9)
        assert rows[name]["rank_after"] == min(2, m.rank, *m.shape)
        # Eckart-Young: what is left out is exactly the dropped singular values.
        left = float(torch.linalg.matrix_norm(d - small.modules[name].delta().double()) ** 2)
        assert left == pytest.approx(total - kept, rel=1e-4, abs=1e-9)
        kept_all, total_all = kept_all + kept, total_all + total
    assert report["energy_kept"] == pytest.approx(kept_all / total_all, rel=1e-9) and report["energy_kept"] < 1
    # An energy target keeps the smallest rank that reaches it.
    _, by_energy = resize(canon, energy=0.9)
    for row in by_energy["modules"]:
        s = torch.linalg.svdvals(canon.modules[row["module"]].delta().double())
        e = (s ** 2).cumsum(0) / (s ** 2).sum()
        assert e[row["rank_after"] - 1] >= 0.9 - 1e-12 and (row["rank_after"] == 1 or e[row["rank_after"] - 2] < 0.9)
    out = resize_file(a, tmp_path / "r.safetensors", rank=2)
    assert out["format"] == "kohya" and {m.rank for m in load_canonical(out["path"]).modules.values()} <= {1, 2}
    with pytest.raises(WeightshopError, match="needs --rank R or --energy E"):
        resize(canon)


def test_combine_equals_applying_both(tiny_dirs, lora_files, tmp_path):
    a, b = lora_files
    ca, cb = load_canonical(a), load_canonical(b)
    both = combine([(ca, 0.7), (cb, -0.4)])
    for name in ca.modules:
        want = 0.7 * ca.modules[name].delta() - 0.4 * cb.modules[name].delta()
        torch.testing.assert_close(both.modules[name].delta(), want, atol=1e-6, rtol=1e-6)
        assert both.modules[name].rank == ca.modules[name].rank + cb.modules[name].rank
    cancelled = combine([(ca, 1.0), (cb, 0.5), (ca, -1.0)])  # any number of LoRAs; a and -a cancel
    for name, m in cb.modules.items():
        torch.testing.assert_close(cancelled.modules[name].delta(), 0.5 * m.delta(), atol=1e-5, rtol=1e-5)

    result = combine_files([LoraRequest(a, 0.7), LoraRequest(b, -0.4)], tmp_path / "ab.safetensors", to="comfyui")
    model = load_model(tiny_dirs[0], dtype="fp32")
    apply_loras(model.pipeline, [LoraRequest(a, 0.7), LoraRequest(b, -0.4)])
    want = transformer_out(model.pipeline.transformer)
    model.pipeline.unload_lora_weights()
    apply_loras(model.pipeline, [LoraRequest(result["path"], 1.0)])
    torch.testing.assert_close(transformer_out(model.pipeline.transformer), want, atol=1e-5, rtol=1e-5)
    sources = json.loads(load_canonical(result["path"]).metadata["weightshop_ops"])[-1]["sources"]
    assert [s["weight"] for s in sources] == [0.7, -0.4]


runner = CliRunner()


def test_cli_resize_combine_merge(tiny_dirs, lora_files, tmp_path):
    a, b = lora_files
    r = runner.invoke(app, ["lora", "resize", str(a), "--rank", "1", "-o", str(tmp_path / "r.safetensors"), "--json"])
    assert r.exit_code == 0, r.stderr
    assert 0 < json.loads(r.stdout)["energy_kept"] < 1
    c = runner.invoke(app, ["lora", "combine", f"{a}:0.5", str(b), "-o", str(tmp_path / "c.safetensors"), "--json"])
    assert c.exit_code == 0, c.stderr
    assert [s["weight"] for s in json.loads(c.stdout)["sources"]] == [0.5, 1.0]
    m = runner.invoke(app, ["lora", "merge", str(a), "-m", str(tiny_dirs[1]), "--strength", "0.3",
                            "--layout", "single-file", "-o", str(tmp_path / "t.safetensors"), "--json"])
    assert m.exit_code == 0, m.stderr
    out = json.loads(m.stdout)
    assert out["checkpoint"] == "turbo" and out["loras"][0]["strength"] == 0.3
    bad = runner.invoke(app, ["lora", "merge", str(a), "-m", str(tiny_dirs[1]), "--layout", "zip",
                              "-o", str(tmp_path / "z")])
    assert bad.exit_code == 2 and "unknown layout 'zip'" in bad.stderr
