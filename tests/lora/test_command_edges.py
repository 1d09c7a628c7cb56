"""The LoRA commands with other people's files: each edge answered the same from the CLI and from Python."""

import json
import os
import re
import shlex

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from weightshop.cli.main import app
from weightshop.errors import WeightshopError
from weightshop.generate import GenerateRequest
from weightshop.lora import LoraRequest, convert_file, load_canonical, save_canonical
from weightshop.lora.inspect import inspect_lora
from weightshop.lora.ops import merge_file, resize, resize_file
from weightshop.models.loading import load_model
from tests.lora.test_formats import make_lora

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return load_model(tiny_dirs[0], dtype="fp32")


@pytest.fixture(scope="module")
def lora(model, tmp_path_factory):
    """A LoRA on every Linear of the tiny transformer (ranks 4 / 2, alpha != rank), in kohya layout."""
    root = tmp_path_factory.mktemp("edges")
    return save_canonical(make_lora(model.pipeline.transformer, seed=3), root / "style.safetensors", "kohya")


@pytest.fixture()
def misfit(tmp_path):
    """A diffusers LoRA whose to_q is 64 wide: the name exists in every Krea 2, the shape in none."""
    q = "transformer.transformer_blocks.0.attn.to_q"
    path = tmp_path / "wide.safetensors"
    save_file({f"{q}.lora_A.weight": torch.ones(4, 64), f"{q}.lora_B.weight": torch.ones(32, 4)}, str(path))
    return path


# --- 1. inspect: a file that fits no known model is an error --------------------------------------------


def test_inspect_is_an_error_when_the_file_fits_no_model(misfit):
    result = run("lora", "inspect", misfit)
    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert str(misfit) in line and "fits none of the models it was compared against" in line
    for name in ("krea2 (1 of 1 modules do not fit)", "krea2-tiny (1 of 1 modules do not fit)"):
        assert name in line
    assert re.search(r"e.g. against krea2[\w-]*: module transformer_blocks.0.attn.to_q: the model's weight is "
                     r"\(out, in\) = \(\d+, \d+\) but the LoRA's is \(32, 64\)", line)
    as_json = run("lora", "inspect", misfit, "--json")
    assert as_json.exit_code == 2 and as_json.stdout == ""
    with pytest.raises(WeightshopError, match="fits none of the models it was compared against"):
        inspect_lora(misfit)
    # Named model: compared against that one only.
    named = run("lora", "inspect", misfit, "--model", "krea2-tiny")
    assert named.exit_code == 2 and "compared against: krea2-tiny (1 of 1" in one_line(named.stderr)
    # Asked for: the report, with the misfit as a warning.
    allowed = run("lora", "inspect", misfit, "--allow-no-fit", "--json")
    assert allowed.exit_code == 0, allowed.stderr
    report = json.loads(allowed.stdout)
    assert report["base_model"] is None and any("fits none of the models checked" in w for w in report["warnings"])
    assert inspect_lora(misfit, require_fit=False)["base_model"] is None


def test_inspect_still_exits_0_when_one_known_model_fits(lora, model):
    result = run("lora", "inspect", lora, "--json")
    assert result.exit_code == 0, result.stderr
    fits = {f["model"]: f["fits"] for f in json.loads(result.stdout)["fits"]}
    assert fits["krea2"] is False and fits["krea2-tiny"] is True  # full size does not fit: no error
    assert inspect_lora(lora)["base_model"] == "krea2-tiny"
    # A file that fits nothing of the given model is an error even though it fits the tiny one.
    full = run("lora", "inspect", lora, "--model", "krea2")
    assert full.exit_code == 2 and "compared against: krea2 (" in one_line(full.stderr)


# --- 2. inspect: ai-toolkit files and ComfyUI; diffusers on kohya keys --------------------------------


def test_inspect_warns_that_comfyui_loads_nothing_from_an_aitoolkit_file(lora, tmp_path):
    aitk = convert_file(lora, tmp_path / "aitk.safetensors", "aitoolkit")
    assert all(k.startswith("base_model.model.") for k in load_file(str(aitk)))
    warning = next(w for w in inspect_lora(aitk)["warnings"] if "ComfyUI loads nothing" in w)
    assert "base_model.model." in warning and "none of ComfyUI's LoRA key rules match" in warning
    # The command it gives is a real one, and its output carries no such warning.
    command = re.search(r"`weightshop (lora convert [^`]+)`", warning).group(1)
    assert "--to comfyui" in command
    converted = runner.invoke(app, shlex.split(command))
    assert converted.exit_code == 0, converted.stderr
    out = re.search(r"-o (\S+)", command).group(1)
    assert out == str(tmp_path / "aitk-comfyui.safetensors")  # next to the source
    assert load_canonical(out).format == "comfyui"
    assert not any("ComfyUI loads nothing" in w for w in inspect_lora(out)["warnings"])
    # The CLI prints it.
    shown = run("lora", "inspect", aitk)
    assert shown.exit_code == 0 and "ComfyUI loads nothing" in shown.stderr
    # Other layouts: no such warning.
    for fmt in ("comfyui", "kohya", "diffusers"):
        path = convert_file(lora, tmp_path / f"{fmt}.safetensors", fmt)
        assert not any("ComfyUI" in w and "loads nothing" in w for w in inspect_lora(path)["warnings"]), fmt


def test_diffusers_on_kohya_keys_is_a_silent_no_op_as_the_warning_says(model, lora, tmp_path):
    warning = next(w for w in inspect_lora(lora)["warnings"] if "load_lora_weights" in w)
    assert "kohya lora_unet_" in warning and "silent no-op" in warning and "0 modules" in warning
    assert "lora_down/lora_up and .alpha keys raise" not in warning  # the old, wrong claim
    pipe = model.pipeline
    pipe.load_lora_weights(str(lora), adapter_name="kohya_direct")  # diffusers itself: no error...
    try:
        assert not pipe.get_list_adapters().get("transformer")  # ...and nothing loaded
    finally:
        pipe.unload_lora_weights()
    # What does raise: .alpha keys under a prefix diffusers converts.
    comfy = load_file(str(convert_file(lora, tmp_path / "c.safetensors", "comfyui")))
    comfy["diffusion_model.first.alpha"] = torch.tensor(4.0)
    save_file(comfy, str(tmp_path / "c_alpha.safetensors"))
    with pytest.raises(ValueError):
        pipe.load_lora_weights(str(tmp_path / "c_alpha.safetensors"), adapter_name="alpha_direct")
    pipe.unload_lora_weights()


# --- 3. PATH[:STRENGTH] ---------------------------------------------------------------------------------


def test_a_bad_strength_is_named_as_a_strength(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for text, tail in (("F:abc", "abc"), ("style.safetensors:0.8x", "0.8x"), ("style.safetensors:", "")):
        with pytest.raises(WeightshopError) as err:
            LoraRequest.parse(text)
        message = str(err.value)
        assert f"bad LoRA strength {tail!r} in {text!r}" in message and "PATH[:STRENGTH]" in message
        assert "a number" in message and "does not exist" not in message
    with pytest.raises(WeightshopError, match="finite"):
        LoraRequest.parse("style.safetensors:nan")
    # Paths with ':' still work: Windows-like, relative to a drive, or any file that exists.
    assert LoraRequest.parse(r"C:\loras\a.safetensors") == LoraRequest(r"C:\loras\a.safetensors", 1.0)
    assert LoraRequest.parse("F:a.safetensors") == LoraRequest("F:a.safetensors", 1.0)
    assert LoraRequest.parse("c:/x/b.safetensors:0.5") == LoraRequest("c:/x/b.safetensors", 0.5)
    (tmp_path / "F:abc").write_bytes(b"")
    assert LoraRequest.parse("F:abc") == LoraRequest("F:abc", 1.0)
    (tmp_path / "take:2").write_bytes(b"")
    assert LoraRequest.parse("take:2") == LoraRequest("take:2", 1.0)  # the file exists, "take" does not
    assert LoraRequest.parse("a.safetensors:-1.5e-1").strength == -0.15


def test_cli_names_the_bad_strength_everywhere(tiny_dirs, lora, tmp_path):
    generate = run("generate", "-m", tiny_dirs[0], "-p", "x", "--lora", "F:abc", "-o", tmp_path / "g")
    assert generate.exit_code == 2
    line = one_line(generate.stderr)
    assert "bad LoRA strength 'abc' in 'F:abc'" in line and "PATH[:STRENGTH]" in line
    combine = run("lora", "combine", f"{lora}:strong", "-o", tmp_path / "c.safetensors")
    assert combine.exit_code == 2 and "bad LoRA strength 'strong'" in combine.stderr
    merge = run("lora", "merge", f"{lora}:x", "-m", tiny_dirs[0], "-o", tmp_path / "m")
    assert merge.exit_code == 2 and "bad LoRA strength 'x'" in merge.stderr
    # A file whose name holds ':' loads; --strength fills in only where none was written.
    colon = tmp_path / "my:style.safetensors"
    colon.write_bytes(lora.read_bytes())
    both = run("lora", "combine", colon, f"{lora}:0.5", "-o", tmp_path / "both.safetensors", "--json")
    assert both.exit_code == 0, both.stderr
    assert [(s["path"], s["weight"]) for s in json.loads(both.stdout)["sources"]] == [(str(colon), 1.0), (str(lora), 0.5)]
    merged = run("lora", "merge", colon, f"{lora}:0.5", "-m", tiny_dirs[0], "--strength", "0.25",
                 "--layout", "single-file", "-o", tmp_path / "m.safetensors", "--json")
    assert merged.exit_code == 0, merged.stderr
    assert [l["strength"] for l in json.loads(merged.stdout)["loras"]] == [0.25, 0.5]


# --- 4. generate: LoRA files checked before the model is loaded -----------------------------------------


def bad_loras(tmp_path, lora) -> dict:
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"a": torch.zeros(2)}, pickled)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(lora.read_bytes()[:-100])
    not_lora = tmp_path / "not_lora.safetensors"
    save_file({"first.weight": torch.zeros(32, 16), "txtfusion.projector.weight": torch.zeros(1, 3)}, str(not_lora))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    return {pickled: "never unpickles", truncated: "is truncated", not_lora: "has no LoRA tensors",
            garbage: "not a safetensors file", tmp_path / "missing.safetensors": "does not exist"}


def test_generate_checks_lora_files_before_loading_the_model(tiny_dirs, lora, tmp_path, monkeypatch):
    import weightshop.models.loading as loading

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the LoRA files were checked")

    monkeypatch.setattr(loading, "load_model", no_load)
    for path, message in bad_loras(tmp_path, lora).items():
        result = run("generate", "-m", tiny_dirs[0], "-p", "x", "--lora", f"{path}:0.7", "-o", tmp_path / "out")
        assert result.exit_code == 2, (path, result.output, result.exception)
        line = one_line(result.stderr)
        assert str(path) in line and message in line, line
        # Python: the request's validate() is the same check, no model needed.
        with pytest.raises(WeightshopError, match=re.escape(message)):
            GenerateRequest(prompts=["x"], loras=[LoraRequest(path, 0.7)]).validate()
    # Even a model that does not exist comes second.
    nowhere = run("generate", "-m", tmp_path / "no-model", "-p", "x", "--lora", tmp_path / "pickled.safetensors")
    assert nowhere.exit_code == 2 and "never unpickles" in nowhere.stderr
    GenerateRequest(prompts=["x"], loras=[LoraRequest(lora, 0.7)]).validate()  # a good file passes


# --- 5. merge: configs copied, weights linked --------------------------------------------------------------


def test_merged_directory_copies_configs_and_links_weights(tiny_dirs, lora, tmp_path):
    base = tiny_dirs[0]
    via_cli = run("lora", "merge", f"{lora}:0.5", "-m", base, "-o", tmp_path / "cli", "--json")
    assert via_cli.exit_code == 0, via_cli.stderr
    merge_file([LoraRequest(lora, 0.5)], base, tmp_path / "py")
    for out in (tmp_path / "cli", tmp_path / "py"):
        for rel in ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json",
                    "scheduler/scheduler_config.json", "tokenizer/tokenizer.json"):
            assert (out / rel).read_bytes() == (base / rel).read_bytes(), rel
            assert not os.path.samefile(out / rel, base / rel), rel
        for rel in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
            assert os.path.samefile(out / rel, base / rel), rel  # same file system here: linked, not copied
        assert not os.path.samefile(out / "transformer/diffusion_pytorch_model.safetensors",
                                    base / "transformer/diffusion_pytorch_model.safetensors")
    # Editing the merged model's config leaves the base's alone.
    before = (base / "model_index.json").read_text()
    index = json.loads((tmp_path / "py" / "model_index.json").read_text())
    (tmp_path / "py" / "model_index.json").write_text(json.dumps({**index, "edited": True}))
    (tmp_path / "py" / "transformer" / "config.json").write_text("{}")
    assert (base / "model_index.json").read_text() == before
    assert json.loads((base / "transformer" / "config.json").read_text())["_class_name"] == "Krea2Transformer2DModel"
    assert load_model(base, dtype="fp32").checkpoint.name == "raw"


# --- 6. resize: the relative error it documents ------------------------------------------------------------


def test_resize_reports_the_relative_error(lora, tmp_path):
    canon = load_canonical(lora)
    small, report = resize(canon, rank=1)
    errors = []
    for row in report["modules"]:
        d = canon.modules[row["module"]].delta().double()
        want = float(torch.linalg.matrix_norm(d - small.modules[row["module"]].delta().double())
                     / torch.linalg.matrix_norm(d))
        assert row["relative_error"] == pytest.approx(want, rel=1e-4, abs=1e-7), row["module"]
        assert row["relative_error"] ** 2 == pytest.approx(1 - row["energy_kept"], rel=1e-6, abs=1e-12)
        errors.append(row["relative_error"])
    assert report["max_relative_error"] == max(errors) > 0.1
    assert report["mean_relative_error"] == pytest.approx(sum(errors) / len(errors))
    # A rank the modules already have: nothing dropped, error 0.
    _, same = resize(canon, rank=8)
    assert same["max_relative_error"] == 0.0 and same["energy_kept"] == pytest.approx(1.0)
    # File API and CLI report the same numbers.
    py = resize_file(lora, tmp_path / "py.safetensors", rank=1)
    assert py["max_relative_error"] == pytest.approx(report["max_relative_error"])
    cli = run("lora", "resize", lora, "--rank", "1", "-o", tmp_path / "cli.safetensors", "--json")
    assert cli.exit_code == 0, cli.stderr
    out = json.loads(cli.stdout)
    assert out["max_relative_error"] == pytest.approx(report["max_relative_error"])
    assert [r["relative_error"] for r in out["modules"]] == pytest.approx(errors)
    text = run("lora", "resize", lora, "--rank", "1", "-o", tmp_path / "text.safetensors")
    assert text.exit_code == 0, text.stderr
    assert f"relative error max {report['max_relative_error']:.2e}" in text.stderr
    assert json.loads(load_canonical(tmp_path / "text.safetensors").metadata["weightshop_ops"])[-1][
        "max_relative_error"] == pytest.approx(report["max_relative_error"])
