"""`weightshop data check / caption` from the command line."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from weightshop.cli.main import app

runner = CliRunner()


def _folder(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / f"img{i}.png")
        (src / f"img{i}.txt").write_text(f"a photo of thing number {i}")
    (src / "broken.png").write_bytes(b"not really a png")
    return src


def test_data_check_writes_manifest_and_report(tmp_path):
    src = _folder(tmp_path)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    result = runner.invoke(app, ["data", "check", str(src), "-o", str(tmp_path / "out"), "--no-ocr",
                                 "--resolution", "64", "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["counts"]["rejected"] == 1 and out["counts"]["ok"] + out["counts"]["warning"] == 3
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert {i["file"] for i in manifest["items"] if i["verdict"] == "rejected"} == {"broken.png"}
    assert all(b[0] % 16 == 0 and b[1] % 16 == 0 for b in (i["bucket"] for i in manifest["items"]) if b)
    assert (tmp_path / "out" / "report.html").is_file()
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source is never modified


def test_data_check_takes_limits_from_the_model(tmp_path, tiny_dirs):
    src = _folder(tmp_path)
    result = runner.invoke(app, ["data", "check", str(src), "-o", str(tmp_path / "out"), "--no-ocr",
                                 "-m", str(tiny_dirs[0]), "--json"])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["target"] == {**manifest["target"], "multiple": 8, "area": 32 * 32}
    counted = [i["caption_tokens"] for i in manifest["items"] if i["verdict"] != "rejected"]
    assert all(isinstance(c, int) and c > 0 for c in counted)


def test_data_caption_inserts_a_trigger_once(tmp_path):
    src = _folder(tmp_path)
    runner.invoke(app, ["data", "check", str(src), "-o", str(tmp_path / "out"), "--no-ocr", "--resolution", "64"])
    path = tmp_path / "out" / "dataset.json"
    for _ in range(2):
        result = runner.invoke(app, ["data", "caption", str(path), "--trigger", "zxq style", "--replace",
                                     "thing=object", "--json"])
        assert result.exit_code == 0, result.stderr
    items = [i for i in json.loads(path.read_text())["items"] if i["verdict"] != "rejected"]
    assert all(i["caption"].startswith("zxq style") and i["caption"].count("zxq style") == 1 for i in items)
    assert all("object" in i["caption"] and "thing" not in i["caption"] for i in items)
    bad = runner.invoke(app, ["data", "caption", str(path), "--replace", "no-equals-sign"])
    assert bad.exit_code == 2 and "expected OLD=NEW" in bad.stderr
    no_weights = runner.invoke(app, ["data", "caption", str(path), "--auto", str(tmp_path / "qwen3vl")])
    assert no_weights.exit_code == 2 and "weights not found" in no_weights.stderr


def test_data_cache_cli_is_incremental(tmp_path, tiny_dirs):
    src = _folder(tmp_path)
    runner.invoke(app, ["data", "check", str(src), "-o", str(tmp_path / "out"), "--no-ocr",
                        "-m", str(tiny_dirs[0])])
    manifest = tmp_path / "out" / "dataset.json"
    first = runner.invoke(app, ["data", "cache", str(manifest), "--json"])
    assert first.exit_code == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["encoded_latents"] == 3 and report["loaded"] == ["vae", "text_encoder"]
    second = json.loads(runner.invoke(app, ["data", "cache", str(manifest), "--json"]).stdout)
    assert (second["encoded_latents"], second["encoded_captions"], second["loaded"]) == (0, 0, [])
    assert first.stdout and (tmp_path / "out" / "cache" / "index.json").is_file()


def test_data_exclude_leaves_images_out_and_restore_puts_them_back(tmp_path):
    src = _folder(tmp_path)
    runner.invoke(app, ["data", "check", str(src), "-o", str(tmp_path / "out"), "--no-ocr", "--resolution", "64"])
    path = tmp_path / "out" / "dataset.json"
    before = json.loads(path.read_text())
    result = runner.invoke(app, ["data", "exclude", str(path), "img1.png", "--why", "off-brand", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["excluded"] == ["img1.png"]
    manifest = json.loads(path.read_text())
    item = next(i for i in manifest["items"] if i["file"] == "img1.png")
    assert item["verdict"] == "rejected" and item["reasons"][-1] == "excluded by the user: off-brand"
    assert manifest["counts"]["rejected"] == before["counts"]["rejected"] + 1
    from weightshop.data import manifest_hash, usable_items

    assert "img1.png" not in {i["file"] for i in usable_items(manifest)}
    assert manifest_hash(manifest) != manifest_hash(before)  # a run on the old set will not resume silently
    # by a phrase of the reasons; errors name what matched nothing
    result = runner.invoke(app, ["data", "exclude", str(path), "--reason", "no such problem"])
    assert result.exit_code != 0 and "'no such problem' matches no usable item" in result.stderr
    result = runner.invoke(app, ["data", "exclude", str(path), "img9.png"])
    assert result.exit_code != 0 and "not in the manifest: img9.png" in result.stderr
    result = runner.invoke(app, ["data", "exclude", str(path), "broken.png"])
    assert result.exit_code != 0 and "all already rejected" in result.stderr
    result = runner.invoke(app, ["data", "exclude", str(path), "--restore", "--json"])
    assert json.loads(result.stdout)["restored"] == ["img1.png"]
    assert json.loads(path.read_text())["items"] == before["items"]  # exactly as checked


def test_exclude_by_reason_phrase():
    from weightshop.data import exclude_items
    from weightshop.data.manifest import new_item, recount

    items = [new_item(f"f{k}.png") for k in range(4)]
    for k, item in enumerate(items):
        item.update(verdict="warning" if k < 3 else "ok", bucket=[64, 64],
                    reasons=["repeated mark: the same pattern sits at the bottom-right"] if k < 2 else
                    ["blurry or very smooth: Laplacian variance 3"] if k == 2 else [])
    manifest = {"items": items}
    recount(manifest)
    assert exclude_items(manifest, reasons=["Repeated Mark"]) == ["f0.png", "f1.png"]
    assert manifest["counts"]["rejected"] == 2 and manifest["items"][0]["reasons"][-1].endswith("'Repeated Mark'")
