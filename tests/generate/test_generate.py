"""Generation: presets applied, seeds reproduce, metadata round-trips, text encoded once, LoRAs verified."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from weightshop.errors import WeightshopError
from weightshop.generate import GenerateRequest, expected_sigmas, generate, plan, read_image_record
from weightshop.generate.text import PromptCache
from weightshop.lora import LoraRequest
from weightshop.models.loading import load_model


def pixels(item):
    return np.asarray(item.image, dtype=np.int16)


@pytest.fixture()
def raw(tiny_dirs):
    return load_model(tiny_dirs[0], dtype="fp32")


@pytest.fixture(scope="module")
def lora_file(tiny_dirs, tmp_path_factory):
    """A diffusers-format LoRA (with alpha metadata) on the tiny transformer, with non-zero lora_B."""
    from diffusers import Krea2Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = load_model(tiny_dirs[0], dtype="fp32")
    transformer = model.pipeline.transformer
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    transformer.add_adapter(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    layers = get_peft_model_state_dict(transformer)
    out = tmp_path_factory.mktemp("lora")
    Krea2Pipeline.save_lora_weights(out, transformer_lora_layers=layers,
                                    transformer_lora_adapter_metadata=config.to_dict(),
                                    weight_name="style.safetensors")
    return out / "style.safetensors"


def test_same_seed_same_bytes_and_seed_alone_decides(raw, tmp_path):
    req = GenerateRequest(prompts=["a red circle"], seeds=[3, 4], steps=6)
    a = generate(raw, req, tmp_path / "a")
    b = generate(raw, req, tmp_path / "b")
    assert a[0].path.read_bytes() == b[0].path.read_bytes()
    assert not np.array_equal(pixels(a[0]), pixels(a[1]))
    batched = generate(raw, GenerateRequest(prompts=["a red circle"], seeds=[9, 3, 4], steps=6, batch_size=3))
    assert np.array_equal(pixels(batched[1]), pixels(a[0])) and np.array_equal(pixels(batched[2]), pixels(a[1]))


def test_png_and_sidecar_carry_the_record(raw, tmp_path):
    req = GenerateRequest(prompts=["a blue square"], negative_prompt="blurry", seeds=[7], steps=5, width=48,
                          height=32)
    item = generate(raw, req, tmp_path)[0]
    record = read_image_record(item.path)
    assert record == json.loads(item.path.with_suffix(".json").read_text()) == item.record
    assert record["prompt"] == "a blue square" and record["negative_prompt"] == "blurry"
    assert (record["seed"], record["steps"], record["guidance"], record["width"], record["height"]) == (7, 5, 3.5, 48, 32)
    assert record["model"]["checkpoint"] == "raw" and len(record["model"]["transformer_sha256"]) == 64
    assert record["weightshop_version"]
    with Image.open(item.path) as im:
        assert im.size == (48, 32) and "Seed: 7" in im.info["parameters"]


def test_raw_and_turbo_sample_on_their_presets(tiny_dirs, raw):
    turbo = load_model(tiny_dirs[1], dtype="fp32")
    tp = plan(turbo, GenerateRequest(prompts=["x"]))
    rp = plan(raw, GenerateRequest(prompts=["x"]))
    assert (tp.preset.steps, tp.preset.guidance, tp.mu) == (8, 0.0, 1.15)
    assert (rp.preset.steps, rp.preset.guidance) == (52, 3.5)
    assert rp.mu == pytest.approx(0.5 + 0.65 / 6144 * (16 - 256))  # 32 px at f4 x 2 = 16 tokens
    for model in (turbo, raw):
        req = GenerateRequest(prompts=["x"], steps=6)
        generate(model, req)
        assert np.allclose(model.pipeline.scheduler.sigmas.numpy(), expected_sigmas(model, req), atol=1e-6)


def test_mu_override_pins_the_schedule(raw):
    req = GenerateRequest(prompts=["x"], steps=4, mu=2.0)
    item = generate(raw, req)[0]
    assert item.record["mu"] == 2.0
    assert np.allclose(raw.pipeline.scheduler.sigmas.numpy(), expected_sigmas(raw, req), atol=1e-6)
    generate(raw, GenerateRequest(prompts=["x"], steps=4))  # and the next call is back on the preset
    assert not np.allclose(raw.pipeline.scheduler.sigmas.numpy(), expected_sigmas(raw, req), atol=1e-3)


def test_prompts_are_encoded_once_and_the_encoder_can_go(raw):
    cache = PromptCache(raw.pipeline, raw.max_sequence_length)
    req = GenerateRequest(prompts=["a red circle", "a blue square", "a red circle"], seeds=[0, 1], steps=3,
                          release_text_encoder=True)
    images = generate(raw, req, prompt_cache=cache)
    assert len(images) == 6
    assert cache.encoded == 3  # two prompts + the empty negative prompt
    assert raw.pipeline.text_encoder is None
    again = generate(raw, GenerateRequest(prompts=["a blue square"], seeds=[1], steps=3), prompt_cache=cache)
    assert np.array_equal(pixels(again[0]), pixels(images[3]))  # jobs run prompt-major: (blue, 1) is 4th
    with pytest.raises(RuntimeError, match="released"):
        cache.warm(["a new prompt"])


def test_guidance_off_skips_the_negative_prompt(tiny_dirs):
    turbo = load_model(tiny_dirs[1], dtype="fp32")
    cache = PromptCache(turbo.pipeline, turbo.max_sequence_length)
    generate(turbo, GenerateRequest(prompts=["a"], seeds=[0]), prompt_cache=cache)
    assert cache.encoded == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=36), "width 36 is not a multiple of 8"),
    (dict(height=8), "out of range"),
    (dict(height=8192), "out of range"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(guidance=-1.0), "guidance must be >= 0"),
    (dict(prompts=[]), "at least one prompt"),
    (dict(seeds=[]), "at least one seed"),
    (dict(batch_size=0), "batch size must be >= 1"),
])
def test_bad_requests(raw, kwargs, message):
    req = GenerateRequest(**({"prompts": ["x"]} | kwargs))
    with pytest.raises(WeightshopError, match=message):
        plan(raw, req)


def test_lora_changes_the_image_in_proportion_to_strength(tiny_dirs, lora_file):
    def render(strength):
        model = load_model(tiny_dirs[0], dtype="fp32")
        loras = [LoraRequest(lora_file, strength)] if strength is not None else []
        return generate(model, GenerateRequest(prompts=["a red circle"], seeds=[0], steps=4, loras=loras))[0]

    base, zero, half, full = render(None), render(0.0), render(0.5), render(1.0)
    assert np.array_equal(pixels(base), pixels(zero))
    d_half = np.abs(pixels(half) - pixels(base)).mean()
    d_full = np.abs(pixels(full) - pixels(base)).mean()
    assert 0 < d_half < d_full
    record = full.record["loras"][0]
    # to_q/k/v/out.0 in 2 transformer blocks + 2 text-fusion blocks
    assert record["strength"] == 1.0 and record["modules"] == 16 and len(record["sha256"]) == 64


def test_lora_that_matches_nothing_is_an_error(raw, lora_file, tmp_path):
    state = load_file(str(lora_file))
    renamed = {k.replace("transformer.transformer_blocks", "transformer.blocks_that_do_not_exist"): v
               for k, v in state.items()}
    save_file(renamed, str(tmp_path / "nomatch.safetensors"))
    with pytest.raises(WeightshopError, match="matched this Krea 2 transformer|does not fit"):
        generate(raw, GenerateRequest(prompts=["x"], steps=2, loras=[LoraRequest(tmp_path / "nomatch.safetensors")]))


def test_kohya_loras_load_and_non_safetensors_loras_are_refused(raw, tmp_path):
    # kohya/musubi names are converted and verified (diffusers alone would raise on lora_down/up)
    save_file({"lora_unet_blocks_0_attn_wq.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_blocks_0_attn_wq.lora_up.weight": torch.zeros(32, 4)}, str(tmp_path / "k.safetensors"))
    out = generate(raw, GenerateRequest(prompts=["x"], steps=2, loras=[LoraRequest(tmp_path / "k.safetensors")]))
    assert out[0].record["loras"][0]["modules"] == 1
    (tmp_path / "l.pt").write_bytes(b"x")
    with pytest.raises(WeightshopError, match="never unpickles"):
        generate(raw, GenerateRequest(prompts=["x"], steps=2, loras=[LoraRequest(tmp_path / "l.pt")]))


def test_lora_request_parsing(tmp_path):
    assert LoraRequest.parse("a/b.safetensors:0.8").strength == 0.8
    assert LoraRequest.parse("c:/x/b.safetensors").strength == 1.0
    assert LoraRequest.parse("b.safetensors:-1").strength == -1.0


def test_lora_files_are_checked_by_the_request_before_any_model(tmp_path):
    """validate() (run by the CLI before it loads the model) reads LoRA headers only and names the problem."""
    with pytest.raises(WeightshopError, match="bad LoRA strength 'abc' in 'F:abc'"):
        LoraRequest.parse("F:abc")
    torch.save({"a": torch.zeros(2)}, tmp_path / "p.safetensors")
    save_file({"img_in.weight": torch.zeros(2, 2)}, str(tmp_path / "full.safetensors"))
    for name, message in (("p.safetensors", "never unpickles"), ("full.safetensors", "has no LoRA tensors"),
                          ("gone.safetensors", "does not exist")):
        with pytest.raises(WeightshopError, match=message):
            GenerateRequest(prompts=["x"], loras=[LoraRequest(tmp_path / name)]).validate()
    with pytest.raises(WeightshopError, match="not a finite number"):
        GenerateRequest(prompts=["x"], loras=[LoraRequest(tmp_path / "full.safetensors", float("inf"))]).validate()
