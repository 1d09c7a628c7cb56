"""The latent / text-embedding cache: exact values, incremental, integrity, caption dropout from cache."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from weightshop.data import check_dataset
from weightshop.data.cache import build_cache, load_cache
from weightshop.errors import WeightshopError


@pytest.fixture()
def dataset(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        size = (64, 48) if i % 2 else (48, 64)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(src / f"p{i}.png")
        (src / f"p{i}.txt").write_text(f"a red circle number {i % 3}")
    manifest = check_dataset(src, target_area=32 * 32, multiple=8, ocr=False)
    return src, manifest


def test_cache_holds_exactly_what_the_pipeline_would_compute(dataset, tiny_dirs, tiny_raw, tmp_path):
    from weightshop.data.buckets import ResizePolicy, resize_and_crop
    from weightshop.data.images import load_image

    src, manifest = dataset
    report = build_cache(manifest, tiny_dirs[0], tmp_path / "cache", dtype="fp32")
    assert report["encoded_latents"] == 5 and report["encoded_captions"] == 4  # 3 captions + the empty one
    assert report["loaded"] == ["vae", "text_encoder"] and report["total_bytes"] > 0
    cached = load_cache(tmp_path / "cache", manifest)
    item = manifest["items"][0]
    image, _ = resize_and_crop(load_image(src / item["file"]).image, tuple(item["bucket"]), ResizePolicy())
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None, :, None] / 127.5 - 1
    vae = tiny_raw.pipeline.vae
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    assert torch.allclose(cached.latents[item["file"]], ((z - mean) / std)[0], atol=1e-5)
    assert cached.latents[item["file"]].shape[-2:] == (item["bucket"][1] // 4, item["bucket"][0] // 4)
    embeds, mask = tiny_raw.pipeline.encode_prompt([item["caption"]], max_sequence_length=32)
    assert torch.allclose(cached.embeds[item["file"]][0], embeds[0], atol=1e-5)
    assert torch.equal(cached.embeds[item["file"]][1], mask[0])
    # caption dropout works from the cache: the empty caption is there, with only the template suffix unmasked
    empty_embeds, empty_mask = tiny_raw.pipeline.encode_prompt([""], max_sequence_length=32)
    assert torch.allclose(cached.empty[0], empty_embeds[0], atol=1e-5) and int(cached.empty[1].sum()) == 5


def test_second_run_is_a_no_op_and_loads_no_encoder(dataset, tiny_dirs, tmp_path):
    _, manifest = dataset
    build_cache(manifest, tiny_dirs[0], tmp_path / "cache")
    again = build_cache(manifest, tiny_dirs[0], tmp_path / "cache")
    assert (again["encoded_latents"], again["encoded_captions"], again["loaded"]) == (0, 0, [])


def test_a_new_caption_encodes_only_that_caption(dataset, tiny_dirs, tmp_path):
    _, manifest = dataset
    build_cache(manifest, tiny_dirs[0], tmp_path / "cache")
    manifest["items"][0]["caption"] = "a blue square"
    again = build_cache(manifest, tiny_dirs[0], tmp_path / "cache")
    assert (again["encoded_latents"], again["encoded_captions"], again["loaded"]) == (0, 1, ["text_encoder"])


def test_corrupt_shard_is_detected_and_rebuilt(dataset, tiny_dirs, tmp_path):
    _, manifest = dataset
    cache = tmp_path / "cache"
    build_cache(manifest, tiny_dirs[0], cache)
    index = json.loads((cache / "index.json").read_text())
    victim = cache / index["entries"][index["items"]["p2.png"]["latents"]]["file"]
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(WeightshopError, match="1 cache files are missing or corrupt"):
        load_cache(cache, manifest)
    again = build_cache(manifest, tiny_dirs[0], cache)
    assert (again["encoded_latents"], again["encoded_captions"]) == (1, 0)
    assert load_cache(cache, manifest).latents["p2.png"].ndim == 3


def test_cache_for_another_manifest_is_refused(dataset, tiny_dirs, tmp_path):
    _, manifest = dataset
    build_cache(manifest, tiny_dirs[0], tmp_path / "cache")
    manifest["items"][1]["caption"] = "changed"
    with pytest.raises(WeightshopError, match="another version of the manifest"):
        load_cache(tmp_path / "cache", manifest)
    with pytest.raises(WeightshopError, match="unknown cache dtype"):
        build_cache(manifest, tiny_dirs[0], tmp_path / "cache", dtype="int4")
