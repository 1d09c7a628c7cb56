"""Shared fixtures: tiny random Krea 2 models built offline once per test session (about 2 s)."""

from __future__ import annotations

import pytest

from weightshop.cli.common import quiet_libraries

quiet_libraries()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine the thread pool's
    contention made one render 100x slower; one thread also keeps results independent of the machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from weightshop.models.tiny import tiny_tokenizer as build

    return build()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_tokenizer):
    """(raw_dir, turbo_dir): diffusers-format tiny Krea 2 directories with different transformer weights."""
    from weightshop.models.tiny import write_tiny_krea2

    root = tmp_path_factory.mktemp("tiny")
    raw = write_tiny_krea2(root / "tiny-raw", checkpoint="raw", tokenizer=tiny_tokenizer)
    turbo = write_tiny_krea2(root / "tiny-turbo", checkpoint="turbo", tokenizer=tiny_tokenizer)
    return raw, turbo


@pytest.fixture(scope="session")
def tiny_raw(tiny_dirs):
    from weightshop.models.loading import load_model

    return load_model(tiny_dirs[0], dtype="fp32")
