"""weightshop.data.captions / captioners: text edits, idempotent triggers, no overwrites, auto-captions."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
from PIL import Image

from weightshop.data import (FunctionCaptioner, Qwen3VLCaptioner, apply_caption_edits, apply_trigger, autocaption,
                             check_dataset, count_tokens, find_replace, render_template)
from weightshop.data.captioners import Captioner
from weightshop.errors import WeightshopError


def test_apply_trigger_modes_and_idempotence():
    assert apply_trigger("a dog", "ohwx") == "ohwx, a dog"
    assert apply_trigger("a dog", "ohwx", mode="suffix") == "a dog, ohwx"
    templated = apply_trigger("a dog", "ohwx", mode="template", template="photo of {trigger}: {caption}")
    assert templated == "photo of ohwx: a dog"
    for mode in ("prefix", "suffix", "template"):
        once = apply_trigger("a dog", "sks dog", mode=mode)
        assert apply_trigger(once, "sks dog", mode=mode) == once
    assert apply_trigger("A photo of OHWX at dusk", "ohwx") == "A photo of OHWX at dusk"   # case-insensitive
    assert apply_trigger("ohwxyz style", "ohwx") == "ohwx, ohwxyz style"                  # whole words only
    assert apply_trigger("", "ohwx") == "ohwx" and apply_trigger(None, "ohwx") == "ohwx"
    with pytest.raises(WeightshopError, match="trigger mode 'middle'"):
        apply_trigger("a", "b", mode="middle")


def test_find_replace():
    assert find_replace("a cat, a cat", [("cat", "dog")]) == "a dog, a dog"
    assert find_replace("a cat  sitting", {"cat": ""}) == "a sitting"
    assert find_replace("img_0012 a cat", [(r"img_\d+\s*", "")], regex=True) == "a cat"
    assert find_replace("1 2", [("1", "2"), ("2", "3")]) == "3 3"                          # applied in order
    assert find_replace(None, [("a", "b")]) is None
    with pytest.raises(WeightshopError, match=r"pattern '\(' is not a valid regular expression"):
        find_replace("x", [("(", "")], regex=True)


def test_render_template():
    fields = {"trigger": "t", "caption": "c", "style": "ink"}
    assert render_template("{trigger}, {caption} in {style}", fields) == "t, c in ink"
    with pytest.raises(WeightshopError, match=r"field 'style', which is not available \(available: caption, trigger\)"):
        render_template("{caption} {style}", {"caption": "c", "trigger": "t"})
    with pytest.raises(WeightshopError, match="positional"):
        render_template("{} x", {"caption": "c"})
    with pytest.raises(WeightshopError, match="malformed"):
        render_template("{caption", {"caption": "c"})


def test_count_tokens(tiny_tokenizer):
    text = "a red circle above a blue square"
    assert count_tokens(text) == 7
    n = count_tokens(text, tiny_tokenizer)
    assert n == len(tiny_tokenizer(text).input_ids) and n >= 7


def _items():
    def item(file, caption, source="sidecar"):
        return {"file": file, "caption": caption, "caption_source": source, "caption_tokens": None, "verdict": "ok",
                "reasons": [], "fixes": [], "extra": {"style": "ink"}}
    return [item("a.png", "a cat"), item("b.png", None, "none"), item("c.png", "", "sidecar"), item("d.png", "a dog")]


def test_edits_never_overwrite_existing_captions_unless_asked():
    items = _items()
    summary = apply_caption_edits(items, new_captions={"a.png": "AUTO", "b.png": "auto b", "c.png": "auto c"})
    assert [i["caption"] for i in items] == ["a cat", "auto b", "auto c", "a dog"]
    assert [i["caption_source"] for i in items] == ["sidecar", "auto", "auto", "sidecar"]
    assert summary["filled"] == 2 and summary["kept_existing"] == 1
    apply_caption_edits(items, new_captions={"a.png": "AUTO"}, overwrite=True)
    assert items[0]["caption"] == "AUTO" and items[0]["caption_source"] == "auto"
    assert items[0]["caption_original"] == "a cat"


def test_edits_trigger_replace_template_in_order():
    items = _items()
    apply_caption_edits(items, replace=[("cat", "tabby")], template="{caption}, {style} drawing", trigger="ohwx")
    assert items[0]["caption"] == "ohwx, a tabby, ink drawing"
    assert items[1]["caption"] is None                      # a missing caption stays missing (and flagged)
    assert items[2]["caption"] == "ohwx, , ink drawing"   # the template applies to blank captions too, literally
    again = copy.deepcopy(items)
    apply_caption_edits(again, trigger="ohwx")
    assert [i["caption"] for i in again] == [i["caption"] for i in items]      # trigger insertion is idempotent


def _folder(tmp_path, n=3):
    root = tmp_path / "src"
    root.mkdir()
    for k in range(n):
        arr = np.random.default_rng(k).integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{k}.png")
    (root / "0.txt").write_text("user caption")
    return root


def _tree(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_manifest_edits_refresh_verdicts_and_leave_source_alone(tmp_path, tiny_tokenizer):
    root = _folder(tmp_path)
    before = _tree(root)
    m = check_dataset(root, target_area=64 * 64, trigger="ohwx", tokenizer=tiny_tokenizer, ocr=False)
    items = {i["file"]: i for i in m["items"]}
    assert any(r.startswith("caption lacks the trigger") for r in items["0.png"]["reasons"])
    assert any(r.startswith("caption missing") for r in items["1.png"]["reasons"])
    apply_caption_edits(m, new_captions={"1.png": "a noise field", "2.png": "more noise"}, tokenizer=tiny_tokenizer)
    apply_caption_edits(m, trigger="ohwx", tokenizer=tiny_tokenizer)
    for item in m["items"]:
        assert item["caption"].startswith("ohwx, ") and item["verdict"] == "ok", item["reasons"]
        assert item["caption_tokens"] == count_tokens(item["caption"], tiny_tokenizer)
    assert m["counts"]["ok"] == 3 and m["stats"]["captions"]["missing_trigger"] == 0
    assert len(m["caption_edits"]) == 2 and m["trigger"] == "ohwx"
    assert _tree(root) == before and not (root / "1.txt").exists()


def test_autocaption_with_ground_truth_function(tmp_path):
    root = _folder(tmp_path)
    m = check_dataset(root, target_area=64 * 64, ocr=False)
    truth = {"0.png": "never used", "1.png": "truth one", "2.png": "truth two"}
    seen = []

    def ground_truth(image):
        assert image.mode == "RGB" and image.size == (96, 96)
        seen.append(image.info["weightshop_file"])
        return truth[image.info["weightshop_file"]]

    captioner = FunctionCaptioner(ground_truth, name="shapes-truth")
    assert isinstance(captioner, Captioner)
    summary = autocaption(m, captioner, batch_size=2)
    assert seen == ["1.png", "2.png"]                       # the existing user caption was not re-captioned
    captions = {i["file"]: (i["caption"], i["caption_source"]) for i in m["items"]}
    assert captions == {"0.png": ("user caption", "sidecar"), "1.png": ("truth one", "auto"),
                        "2.png": ("truth two", "auto")}
    assert summary["captioner"] == "shapes-truth" and summary["filled"] == 2
    autocaption(m, FunctionCaptioner(lambda ims: [f"b{len(ims)}"] * len(ims), batched=True), overwrite=True,
                batch_size=2)
    assert [i["caption"] for i in m["items"]] == ["b2", "b2", "b1"]
    with pytest.raises(WeightshopError, match="returned 0 captions for 3 images"):
        autocaption(m, FunctionCaptioner(lambda ims: [], batched=True), overwrite=True)


def test_qwen3vl_captioner_needs_local_weights(tmp_path):
    with pytest.raises(WeightshopError, match=f"weights not found at {tmp_path / 'qwen'}"):
        Qwen3VLCaptioner(tmp_path / "qwen")
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text("{}")
    with pytest.raises(WeightshopError, match="no \\*.safetensors"):
        Qwen3VLCaptioner(tmp_path / "qwen")
