"""Loading Krea 2 every way users hold it, and the errors for everything else."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from weightshop.errors import WeightshopError
from weightshop.models.info import describe
from weightshop.models.keys import diffusers_to_original
from weightshop.models.loading import (
    infer_transformer_config,
    load_model,
    load_pair,
    load_single_file_transformer,
    resolve_dtype,
    resolve_source,
)
from weightshop.models.tiny import write_single_file


def forward_once(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    latents = torch.randn(2, 16, cfg.in_channels, generator=g)
    text = torch.randn(2, 6, cfg.num_text_layers, cfg.text_hidden_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ids = torch.zeros(6 + 16, 3)
    ids[6:, 1] = torch.arange(16) // 4
    ids[6:, 2] = torch.arange(16) % 4
    with torch.no_grad():
        return transformer(latents, text, torch.tensor([0.3, 0.9]), ids, mask, return_dict=False)[0]


def test_diffusers_directory_loads_with_krea_scheduler(tiny_raw):
    pipe = tiny_raw.pipeline
    assert tiny_raw.checkpoint.name == "raw" and not pipe.config.is_distilled
    assert pipe.scheduler.config.max_image_seq_len == 6400
    assert pipe.scheduler.config.use_dynamic_shifting
    assert tiny_raw.size_multiple == 8 and tiny_raw.default_size == 32


def test_single_file_in_original_layout_equals_directory_load(tiny_dirs, tiny_raw, tmp_path):
    path = write_single_file(tiny_raw.pipeline.transformer, tmp_path / "raw.safetensors")
    single = load_model(path, components=tiny_dirs[0], dtype="fp32")
    assert single.source.kind == "single_file" and single.checkpoint.name == "raw"
    a, b = tiny_raw.pipeline.transformer.state_dict(), single.pipeline.transformer.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(forward_once(tiny_raw.pipeline.transformer), forward_once(single.pipeline.transformer))


def test_single_file_with_diffusers_names_and_prefixed_original_names(tiny_raw, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_raw.pipeline.transformer.state_dict().items()}
    cfg = dict(tiny_raw.pipeline.transformer.config)
    save_file(state, str(tmp_path / "d.safetensors"))
    prefixed = {f"model.diffusion_model.{k}": v for k, v in diffusers_to_original(state).items()}
    save_file(prefixed, str(tmp_path / "p.safetensors"))
    for name in ("d", "p"):
        model = load_single_file_transformer(tmp_path / f"{name}.safetensors", cfg)
        assert torch.equal(forward_once(model), forward_once(tiny_raw.pipeline.transformer))


def test_official_folder_layout_picks_the_checkpoint_file(tiny_dirs, tiny_raw, tmp_path):
    folder = tmp_path / "krea2"
    for sub in ("vae", "text_encoder", "tokenizer", "transformer"):
        shutil.copytree(tiny_dirs[0] / sub, folder / sub)
    shutil.copy(tiny_dirs[0] / "weightshop.json", folder)  # carries the tiny encoder's taps
    write_single_file(tiny_raw.pipeline.transformer, folder / "raw.safetensors")
    write_single_file(tiny_raw.pipeline.transformer, folder / "turbo.safetensors")
    assert resolve_source(folder).checkpoint == "raw"
    source = resolve_source(folder, checkpoint="turbo")
    assert source.kind == "single_file" and source.transformer.name == "turbo.safetensors"
    assert load_model(folder, checkpoint="turbo", dtype="fp32").pipeline.config.is_distilled


def test_turbo_is_detected_and_pair_shares_components(tiny_dirs):
    pair = load_pair(*tiny_dirs, dtype="fp32")
    assert pair.turbo.checkpoint.name == "turbo" and pair.turbo.pipeline.config.is_distilled
    assert pair.raw.pipeline.vae is pair.turbo.pipeline.vae
    assert pair.raw.pipeline.text_encoder is pair.turbo.pipeline.text_encoder
    assert pair.raw.pipeline.transformer is not pair.turbo.pipeline.transformer
    assert not torch.equal(forward_once(pair.raw.pipeline.transformer), forward_once(pair.turbo.pipeline.transformer))


def test_bf16_keeps_norms_in_fp32(tiny_dirs, tiny_raw, tmp_path):
    model = load_model(tiny_dirs[0], dtype="bf16")
    params = dict(model.pipeline.transformer.named_parameters())
    assert params["transformer_blocks.0.attn.to_q.weight"].dtype == torch.bfloat16
    assert params["transformer_blocks.0.norm1.weight"].dtype == torch.float32
    path = write_single_file(tiny_raw.pipeline.transformer, tmp_path / "raw.safetensors")
    single = load_single_file_transformer(path, dict(tiny_raw.pipeline.transformer.config), torch.bfloat16)
    assert {n: p.dtype for n, p in single.named_parameters()} == {n: p.dtype for n, p in params.items()}


def test_config_is_inferred_from_shapes(tiny_raw):
    cfg = tiny_raw.pipeline.transformer.config
    shapes = {k: tuple(v.shape) for k, v in tiny_raw.pipeline.transformer.state_dict().items()}
    inferred = infer_transformer_config(shapes)
    for key, value in inferred.items():
        assert cfg[key] == value, key
    assert "axes_dims_rope" not in inferred  # head_dim 16: the rotary split must come from a config


def test_full_size_krea2_config_is_inferred_on_the_meta_device():
    from accelerate import init_empty_weights
    from diffusers import Krea2Transformer2DModel

    with init_empty_weights():
        full = Krea2Transformer2DModel()
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert sum(p.numel() for p in full.parameters()) == 12_820_073_036
    inferred = infer_transformer_config(shapes)
    assert {k: v for k, v in full.config.items() if k in inferred} == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in inferred.items()} | {
        "axes_dims_rope": full.config.axes_dims_rope}


def test_info_reads_headers_only(tiny_dirs):
    info = describe(tiny_dirs[1])
    assert info["checkpoint"] == "turbo" and info["preset"]["steps"] == 8 and info["preset"]["mu"] == 1.15
    assert info["transformer_parameters"] == sum(p.numel() for p in __import__(
        "weightshop.models.tiny", fromlist=["x"]).tiny_transformer().parameters())
    assert info["size_multiple"] == 8


# --- errors ---------------------------------------------------------------------------------------


def test_missing_path_names_what_is_accepted():
    with pytest.raises(WeightshopError, match="not found: expected a diffusers directory"):
        resolve_source("/nonexistent/place")


def test_non_safetensors_file_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(WeightshopError, match="not a .safetensors file"):
        resolve_source(tmp_path / "model.bin")


def test_truncated_safetensors(tiny_dirs, tiny_raw, tmp_path):
    path = write_single_file(tiny_raw.pipeline.transformer, tmp_path / "raw.safetensors")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightshopError, match="not a readable safetensors file"):
        load_model(path, components=tiny_dirs[0])


def test_safetensors_of_another_model(tiny_dirs, tmp_path):
    save_file({"down_blocks.0.weight": torch.zeros(2)}, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(WeightshopError, match="not a Krea 2 transformer"):
        load_model(tmp_path / "sdxl.safetensors", components=tiny_dirs[0])


def test_incomplete_transformer_file(tiny_dirs, tiny_raw, tmp_path):
    state = diffusers_to_original(tiny_raw.pipeline.transformer.state_dict())
    del state["blocks.1.attn.wq.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "raw.safetensors"))
    with pytest.raises(WeightshopError, match="blocks.1.attn.to_q.weight"):
        load_model(tmp_path / "raw.safetensors", components=tiny_dirs[0])


def test_single_file_without_components(tiny_raw, tmp_path):
    path = write_single_file(tiny_raw.pipeline.transformer, tmp_path / "raw.safetensors")
    with pytest.raises(WeightshopError, match="--components"):
        resolve_source(path)


def test_components_dir_missing_a_part(tiny_dirs, tiny_raw, tmp_path):
    comp = tmp_path / "comp"
    shutil.copytree(tiny_dirs[0] / "vae", comp / "vae")
    path = write_single_file(tiny_raw.pipeline.transformer, tmp_path / "raw.safetensors")
    with pytest.raises(WeightshopError, match="lacks text_encoder, tokenizer"):
        resolve_source(path, components=comp)


def test_diffusers_dir_missing_vae(tiny_dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs[0], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(WeightshopError, match="missing vae/"):
        resolve_source(broken)


def test_other_pipeline_directory(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(WeightshopError, match="FluxPipeline directory, not Krea 2"):
        resolve_source(tmp_path)


def test_text_taps_deeper_than_the_encoder(tiny_dirs, tmp_path):
    broken = tmp_path / "deep"
    shutil.copytree(tiny_dirs[0], broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["text_encoder_select_layers"] = [2, 5, 35]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(WeightshopError, match="has 4 layers but the taps reach layer 35"):
        load_model(broken)


def test_components_that_do_not_fit_the_transformer(tiny_dirs, tmp_path):
    from weightshop.models.tiny import TinySizes, write_tiny_krea2

    other = write_tiny_krea2(tmp_path / "other", sizes=TinySizes(text_hidden=48))
    with pytest.raises(WeightshopError, match="does not fit the transformer"):
        load_model(tiny_dirs[0], components=other)


def test_bad_options():
    with pytest.raises(WeightshopError, match="unknown dtype 'int3'"):
        resolve_dtype("int3")
    with pytest.raises(WeightshopError, match="unknown checkpoint 'medium'"):
        resolve_source("/x", checkpoint="medium")
    if not torch.cuda.is_available():
        with pytest.raises(WeightshopError, match="CUDA is not available"):
            load_model("/x", device="cuda")
