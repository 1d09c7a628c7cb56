"""The one set of file writers and readers: atomic, and clear about what is wrong with a file."""

import json

import pytest
import torch
from safetensors.torch import load_file

from weightshop.errors import WeightshopError
from weightshop.io import atomic_save_safetensors, atomic_write_json, read_json, safetensors_shapes


def test_atomic_safetensors_round_trip_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "deep" / "w.safetensors"
    weight = torch.arange(12.0).reshape(3, 4).t()  # a non-contiguous view is written as it reads
    atomic_save_safetensors(path, {"w": weight}, {"note": "first"})
    assert torch.equal(load_file(str(path))["w"], weight)
    before = path.read_bytes()
    with pytest.raises(Exception):
        atomic_save_safetensors(path, {"w": "not a tensor"})
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.safetensors"]  # no temporary file left
    assert safetensors_shapes(path) == {"w": (4, 3)}


def test_read_json_missing_empty_or_broken(tmp_path):
    assert read_json(tmp_path / "none.json") == {} and read_json(tmp_path / "none.json", missing=None) is None
    atomic_write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert read_json(tmp_path / "a.json") == {"b": [1, 2]}
    (tmp_path / "bad.json").write_text('{"b": [1,')
    with pytest.raises(WeightshopError, match=r"bad.json is not valid JSON \(.* at line 1\)"):
        read_json(tmp_path / "bad.json")


def test_a_truncated_safetensors_file_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    atomic_save_safetensors(path, {"w": torch.ones(64, 64)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightshopError, match=r"w.safetensors is not a readable safetensors file .* truncated"):
        safetensors_shapes(path)
    (tmp_path / "p.pt").write_bytes(json.dumps({"x": 1}).encode())
    with pytest.raises(WeightshopError, match="never unpickles"):
        safetensors_shapes(tmp_path / "p.pt")
