"""Serving fixtures: the nano Turbo model loaded once, a LoRA directory, and servers on 127.0.0.1 at free ports.

Renders are kept tiny (32x32 or 64x64, 1-2 steps) so the whole serve suite stays well under a minute and a half.
"""

from __future__ import annotations

import pytest

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789"}


@pytest.fixture(scope="session")
def nano_turbo():
    from weightshop.models.loading import load_model

    return load_model("krea2-nano-turbo", dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def lora_dir(nano_turbo, tmp_path_factory):
    """Two LoRAs for the nano transformer, `style` and `shape`, and a file outside the directory linked into it."""
    from tests.lora.test_formats import make_lora
    from weightshop.lora import save_canonical

    root = tmp_path_factory.mktemp("serve-loras")
    loras = root / "loras"
    loras.mkdir()
    transformer = nano_turbo.pipeline.transformer
    save_canonical(make_lora(transformer, seed=1), loras / "style.safetensors", "diffusers")
    save_canonical(make_lora(transformer, seed=2), loras / "shape.safetensors", "kohya")
    outside = save_canonical(make_lora(transformer, seed=3), root / "secret.safetensors", "diffusers")
    (loras / "linked.safetensors").symlink_to(outside)
    return loras


def make_config(tmp_path, model, lora_dir=None, keys=KEYS, **overrides):
    from weightshop.serve import ServeConfig

    settings = {"dollars_per_hour": 2.5, "max_side": 128, "max_steps": 4, **overrides}
    config = ServeConfig(model=model, data_dir=tmp_path / "serve", lora_dir=lora_dir, **settings)
    for name, key in (keys or {}).items():
        config.add_key(name, key)
    return config


@pytest.fixture(scope="module")
def served(nano_turbo, lora_dir, tmp_path_factory):
    """A running server with two API keys; yields (server, keys)."""
    from weightshop.serve import Server

    server = Server(make_config(tmp_path_factory.mktemp("served"), nano_turbo, lora_dir)).start()
    try:
        yield server
    finally:
        server.stop()


def auth(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}
