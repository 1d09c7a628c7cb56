"""The real tier's loading and math on tiny random models saved with save_pretrained (safetensors) and loaded back
through weightshop.judge.real: from a local folder and from a hand-made Hugging Face cache, never the network."""

from __future__ import annotations

import hashlib
import shutil
import socket
import sys

import numpy as np
import pytest
from PIL import Image

from weightshop.judge import Job
from weightshop.judge.real import (ClipImageJudge, ClipTextJudge, DinoJudge, PickScoreJudge, RealConfig, find_model,
                                   real_judges, strip_words)

SIZE = 32


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_tokenizer():
    from transformers import CLIPTokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(ByteLevel.alphabet()):  # every byte, alone and word-final: any text tokenizes, no merges needed
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"clip", "dino", "dinov2"}: folders with tiny random models (a few hundred KB each)."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, Dinov2Config, Dinov2Model, ViTConfig,
                              ViTModel)

    root = tmp_path_factory.mktemp("real")
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(0)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=SIZE,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(
        root / "clip")
    ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       image_size=SIZE, patch_size=8), add_pooling_layer=False).save_pretrained(root / "dino")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                             image_size=SIZE, patch_size=8)).save_pretrained(root / "dinov2")
    return {k: root / k for k in ("clip", "dino", "dinov2")}


def _images():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    y, x = np.mgrid[0:40, 0:48]
    ramp = Image.fromarray(np.stack([x * 5, y * 6, 255 - x * 5], -1).astype(np.uint8))
    return noise, ramp, Image.new("RGB", (36, 36), (200, 30, 30))


@pytest.fixture
def empty_hf(tmp_path, monkeypatch):
    """An empty Hugging Face home, offline, and no socket may connect: any download attempt fails loudly."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the real tier tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path / "hf-home"


def test_clip_image_self_similarity_is_one_and_deterministic(models):
    a, b, c = _images()
    judge = ClipImageJudge([a], model=models["clip"], device="cpu")
    first = judge.per_image([a, b, c], [Job("x", 0)] * 3)
    assert list(first) == ["clip_i"] and len(first["clip_i"]) == 3
    assert first["clip_i"][0] == pytest.approx(1.0, abs=1e-5)
    assert max(first["clip_i"][1:]) < first["clip_i"][0] - 1e-4
    again = ClipImageJudge([a], model=models["clip"], device="cpu")  # a fresh load gives the same numbers
    assert again.per_image([a, b, c], [Job("x", 0)] * 3) == first
    # per image: the mean over the references; the set's figure: the mean over every pair
    two = ClipImageJudge([a, b], model=judge.embedder)
    sims = two.similarities([a, b, c])
    assert sims.shape == (3, 2)
    assert two.per_image([a, b, c], [])["clip_i"] == pytest.approx(sims.mean(1).tolist())
    assert two.score([a, b, c], [])["clip_i"] == pytest.approx(float(sims.mean()))
    assert judge.identity.weights_sha256 == _sha256(models["clip"] / "model.safetensors")
    assert judge.identity.backend == str(models["clip"])
    assert "torchvision" not in sys.modules


def test_clip_text_strips_the_trigger(models):
    a, b, _ = _images()
    judge = ClipTextJudge(models["clip"], strip="sks", device="cpu")
    with_trigger = judge.per_image([a, b], [Job("a photo of sks dog", 0), Job("a red sks toy, studio", 1)])
    plain = ClipTextJudge(judge.clip).per_image([a, b], [Job("a photo of dog", 0), Job("a red toy, studio", 1)])
    assert list(with_trigger) == ["clip_t"] and len(with_trigger["clip_t"]) == 2
    assert with_trigger == plain
    other = judge.per_image([a, b], [Job("a photo of dog", 0), Job("zebra crossing at night", 1)])["clip_t"]
    assert other[0] == plain["clip_t"][0] and other[1] != plain["clip_t"][1]  # the text does count
    assert all(-1 <= v <= 1 for v in with_trigger["clip_t"])
    assert judge.score([a, b], [Job("a photo of sks dog", 0), Job("a red sks toy, studio", 1)]) == {
        "clip_t": pytest.approx(float(np.mean(with_trigger["clip_t"])))}
    assert judge.identity.weights_sha256 == _sha256(models["clip"] / "model.safetensors")


def test_pickscore_is_scaled_clip_cosine(models):
    a, b, _ = _images()
    jobs = [Job("a dog", 0), Job("a toy", 1)]
    clip_t = ClipTextJudge(models["clip"], device="cpu")
    pick = PickScoreJudge(clip_t.clip)
    scale = clip_t.clip.logit_scale
    expected = [scale * v for v in clip_t.per_image([a, b], jobs)["clip_t"]]
    assert pick.per_image([a, b], jobs)["pickscore"] == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["dino", "dinov2"])
def test_dino_judges(models, kind):
    a, b, c = _images()
    judge = DinoJudge([a], model=models[kind], crop=SIZE, device="cpu")
    assert judge.name == kind
    out = judge.per_image([a, b, c], [Job("x", 0)] * 3)
    assert list(out) == [kind] and len(out[kind]) == 3
    assert out[kind][0] == pytest.approx(1.0, abs=1e-5)
    assert max(out[kind][1:]) < out[kind][0] - 1e-4
    assert judge.per_image([a, b, c], []) == out
    assert judge.identity.weights_sha256 == _sha256(models[kind] / "model.safetensors")
    assert judge.score([a, b, c], [])[kind] == pytest.approx(float(np.mean(out[kind])))


def test_missing_weights_are_skipped_with_a_reason(empty_hf):
    assert find_model("openai/clip-vit-large-patch14") is None
    assert find_model("facebook/dino-vits16") is None
    judges, skipped = real_judges(RealConfig(references=list(_images())))
    assert judges == []
    assert skipped[0] == ("clip_t: skipped: openai/clip-vit-large-patch14 is not in the HF cache "
                          f"({empty_hf / 'hub'}) or at a given path (hf download openai/clip-vit-large-patch14)")
    assert [s.split(": skipped: ")[0] for s in skipped] == ["clip_t", "clip_i", "dino", "dinov2"]
    assert "hf download facebook/dino-vits16" in skipped[2] and "hf download facebook/dinov2-base" in skipped[3]
    judges, skipped = real_judges({"clip": None, "dino": None, "dinov2": None,
                                   "pickscore": "yuvalkirstain/PickScore_v1"})
    assert judges == [] and skipped == [
        f"pickscore: skipped: yuvalkirstain/PickScore_v1 is not in the HF cache ({empty_hf / 'hub'}) or at a given "
        "path (hf download yuvalkirstain/PickScore_v1)"]


def test_local_paths_load_every_judge(models, empty_hf):
    a, b, c = _images()
    config = RealConfig(references=[a, b], strip=["sks"], clip=str(models["clip"]), dino=str(models["dino"]),
                        dinov2=str(models["dinov2"]), device="cpu", dino_crop=SIZE)
    judges, skipped = real_judges(config)
    assert skipped == []
    assert [j.name for j in judges] == ["clip-t", "clip-i", "dino", "dinov2"]
    jobs = [Job("sks dog", 0), Job("sks dog", 1)]
    for judge in judges:
        out = judge.per_image([a, c], jobs)
        assert len(out) == 1 and len(next(iter(out.values()))) == 2
    # without references, the image-to-image metrics say why they did not run
    judges, skipped = real_judges(RealConfig(clip=str(models["clip"]), dino=str(models["dino"]), dinov2=None,
                                             device="cpu"))
    assert [j.name for j in judges] == ["clip-t"]
    assert skipped == ["clip_i: skipped: no reference images given", "dino: skipped: no reference images given"]


def test_a_dino_model_asked_for_as_dinov2_is_not_substituted(models, empty_hf):
    judges, skipped = real_judges(RealConfig(references=list(_images()), clip=None, dino=None,
                                             dinov2=str(models["dino"]), device="cpu", dino_crop=SIZE))
    assert judges == [] and skipped == [f"dinov2: skipped: {models['dino']} is a dino model, not dinov2"]


def test_the_hf_cache_is_searched_and_only_safetensors_count(models, empty_hf, monkeypatch, tmp_path):
    hub = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    commit = "0" * 40
    repo = hub / "models--someone--tiny-clip"
    shutil.copytree(models["clip"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert find_model("someone/tiny-clip") == repo / "snapshots" / commit
    judges, skipped = real_judges(RealConfig(clip="someone/tiny-clip", dino=None, dinov2=None, device="cpu"))
    assert skipped == ["clip_i: skipped: no reference images given"]
    assert judges[0].identity.backend == "someone/tiny-clip"
    assert judges[0].identity.weights_sha256 == _sha256(models["clip"] / "model.safetensors")
    # a cached copy with pickled weights only is not used, and the reason says so
    (repo / "snapshots" / commit / "model.safetensors").rename(repo / "snapshots" / commit / "pytorch_model.bin")
    assert find_model("someone/tiny-clip") is None
    judges, skipped = real_judges(RealConfig(clip="someone/tiny-clip", dino=None, dinov2=None))
    assert judges == [] and "no model.safetensors (only safetensors weights are read)" in skipped[0]


def test_find_model_local_folders(models, tmp_path):
    assert find_model(models["dino"]) == models["dino"]
    assert find_model(str(models["dino"])) == models["dino"]
    (tmp_path / "only-config").mkdir()
    (tmp_path / "only-config" / "config.json").write_text("{}")
    assert find_model(tmp_path / "only-config") is None
    assert find_model(tmp_path / "nothing-here") is None


def test_strip_words():
    assert strip_words("a photo of sks dog", ["sks"]) == "a photo of dog"
    assert strip_words("a photo of SKS, on the beach by sks.", ["sks"]) == "a photo of, on the beach by."
    assert strip_words("a sksy dog", ["sks"]) == "a sksy dog"
    assert strip_words("a photo of ohwx man", ["ohwx", "man"]) == "a photo of"
