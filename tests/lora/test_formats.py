"""LoRA layouts: one key map, exact conversions, every layout applied like the diffusers original, clear errors."""

import itertools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from weightshop.cli.main import app
from weightshop.errors import WeightshopError
from weightshop.generate import GenerateRequest, generate
from weightshop.lora import FORMATS, LoraRequest, apply_loras, convert_file, detect_format, load_canonical
from weightshop.lora.formats import (
    CanonicalLora,
    LoraModule,
    kohya_to_diffusers_module,
    linear_shapes,
    module_templates,
    module_to_original,
    to_canonical,
)
from weightshop.models.keys import diffusers_to_original_key
from weightshop.models.loading import load_model

RANK = 4


def make_lora(transformer, seed=0, rank=RANK, alpha_factor=2.0) -> CanonicalLora:
    """Every Linear of the tiny transformer; odd modules at rank 2 with alpha == rank, the rest alpha = 2 * rank."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for i, (name, (out, inp)) in enumerate(linear_shapes(transformer).items()):
        r, a = (2, 2.0) if i % 2 else (rank, alpha_factor * rank)
        modules[name] = LoraModule(torch.randn(r, inp, generator=g) * 0.3, torch.randn(out, r, generator=g) * 0.3, a)
    return CanonicalLora(modules, {"weightshop": json.dumps({"trigger": "zq"})})


def write_diffusers_original(canon: CanonicalLora, path):
    """A diffusers-layout file the way peft/diffusers write one: alpha NOT folded, alpha and ranks in metadata."""
    tensors = {}
    for name, m in canon.modules.items():
        tensors[f"transformer.{name}.lora_A.weight"] = m.down
        tensors[f"transformer.{name}.lora_B.weight"] = m.up
    ranks = {n: m.rank for n, m in canon.modules.items()}
    config = {"r": RANK, "lora_alpha": 2.0 * RANK, "target_modules": sorted(ranks),
              "rank_pattern": {n: r for n, r in ranks.items() if r != RANK},
              "alpha_pattern": {n: m.alpha for n, m in canon.modules.items() if m.rank != RANK}}
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(
        {f"transformer.{k}": v for k, v in config.items()}), "weightshop": canon.metadata["weightshop"]})
    return path


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return load_model(tiny_dirs[0], dtype="fp32")


@pytest.fixture(scope="module")
def lora(model):
    return make_lora(model.pipeline.transformer)


@pytest.fixture(scope="module")
def files(lora, tmp_path_factory):
    """The diffusers original and a direct conversion of it into every format."""
    root = tmp_path_factory.mktemp("formats")
    original = write_diffusers_original(lora, root / "original.safetensors")
    return original, {fmt: convert_file(original, root / f"{fmt}.safetensors", fmt) for fmt in FORMATS}


def deltas(canon):
    return {name: m.delta() for name, m in canon.modules.items()}


def render(model, loras=()):
    req = GenerateRequest(prompts=["a red circle"], seeds=[1], steps=2, loras=list(loras))
    try:
        return np.asarray(generate(model, req)[0].image, dtype=np.float64) / 255
    finally:
        model.pipeline.unload_lora_weights()


# --- the key map --------------------------------------------------------------------------------------


def test_key_map_comes_from_the_model_and_keys_py():
    templates = module_templates()
    assert "transformer_blocks.{}.attn.to_out.0" in templates and "txt_in.linear_1" in templates
    assert len(templates) == 32  # every Linear of Krea2Transformer2DModel, blocks as templates
    # original names come from models/keys.py, the one table of full-weight names
    for t in templates:
        name = t.format(7)
        assert module_to_original(name) + ".weight" == diffusers_to_original_key(name + ".weight")
    # kohya names use underscores; names with underscores of their own still resolve
    assert kohya_to_diffusers_module("blocks_12_attn_wo") == "transformer_blocks.12.attn.to_out.0"
    assert kohya_to_diffusers_module("txtmlp_3") == "txt_in.linear_2"
    assert kohya_to_diffusers_module("txtfusion_refiner_blocks_1_mlp_gate") == "text_fusion.refiner_blocks.1.ff.gate"
    assert kohya_to_diffusers_module("transformer_blocks_0_attn_to_out_0") == "transformer_blocks.0.attn.to_out.0"
    assert kohya_to_diffusers_module("blocks_0_attn_to_out_0") is None


def test_every_format_has_its_layout_and_alpha_rule(files, lora):
    _, by_format = files
    keys = {fmt: set(load_file(str(p))) for fmt, p in by_format.items()}
    assert "transformer.txt_in.linear_1.lora_A.weight" in keys["diffusers"]
    assert "diffusion_model.txtmlp.1.lora_A.weight" in keys["comfyui"]
    assert "base_model.model.blocks.0.attn.wo.lora_B.weight" in keys["aitoolkit"]
    assert {"lora_unet_txtmlp_1.lora_down.weight", "lora_unet_txtmlp_1.alpha"} <= keys["kohya"]
    assert not any(k.endswith(".alpha") for fmt in ("diffusers", "comfyui", "aitoolkit") for k in keys[fmt])
    for fmt, path in by_format.items():
        canon = load_canonical(path)
        assert canon.format == fmt and detect_format(keys[fmt]) == fmt
        assert json.loads(canon.metadata["weightshop"])["trigger"] == "zq"  # metadata carried over
        alphas_are_ranks = all(m.alpha == m.rank for m in canon.modules.values())
        assert alphas_are_ranks == (fmt != "kohya")  # folded everywhere but kohya, which keeps .alpha keys
    from safetensors import safe_open

    with safe_open(str(by_format["diffusers"]), "pt") as f:
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])
        written = json.loads(f.metadata()["weightshop_lora"])
    assert written["format"] == "diffusers" and written["read_from"] == "diffusers"
    r = adapter["transformer.r"]
    assert adapter["transformer.lora_alpha"] == r and r in (2, RANK)
    assert set(adapter["transformer.rank_pattern"].values()) == {6 - r} and len(adapter["transformer.rank_pattern"]) == 20
    assert adapter["transformer.alpha_pattern"] == adapter["transformer.rank_pattern"]  # alpha == rank everywhere


def test_every_format_converts_to_every_other_and_back_exactly(files, lora, tmp_path):
    original, by_format = files
    want = deltas(load_canonical(original))
    assert all(torch.equal(want[n], m.delta()) for n, m in lora.modules.items())  # the original read right
    for a, b in itertools.permutations(FORMATS, 2):
        there = convert_file(by_format[a], tmp_path / f"{a}-{b}.safetensors", b)
        back = convert_file(there, tmp_path / f"{a}-{b}-{a}.safetensors", a)
        assert set(load_file(str(there))) == set(load_file(str(by_format[b])))
        assert set(load_file(str(back))) == set(load_file(str(by_format[a])))
        got = deltas(load_canonical(back))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[n], want[n]) for n in want), (a, b)


def test_fold_keeps_low_precision_exact():
    g = torch.Generator().manual_seed(0)
    m = LoraModule(torch.randn(4, 8, generator=g).bfloat16(), torch.randn(6, 4, generator=g).bfloat16(), 3.0)
    folded = m.folded()  # scale 0.75 is not a power of two: up kept in float32
    assert folded.alpha == folded.rank and folded.up.dtype == torch.float32
    torch.testing.assert_close(folded.delta(), m.delta(), rtol=1e-6, atol=1e-7)
    half = LoraModule(m.down, m.up, 2.0).folded()  # scale 0.5: exact in bf16
    assert half.up.dtype == torch.bfloat16 and torch.equal(half.delta(), LoraModule(m.down, m.up, 2.0).delta())


# --- applying: every layout renders like the diffusers original ---------------------------------------


def test_images_in_every_format_equal_the_diffusers_original(model, files):
    original, by_format = files
    base = render(model)
    model.pipeline.load_lora_weights(str(original), adapter_name="reference")  # diffusers' own reading
    reference = render(model)
    assert np.abs(reference - base).max() > 0.05  # the LoRA visibly changes the image
    for fmt, path in {"original": original, **by_format}.items():
        got = render(model, [LoraRequest(path, 1.0)])
        assert np.abs(got - reference).max() <= 1e-5, fmt
    for fmt in ("diffusers", "comfyui", "aitoolkit"):  # files weightshop writes also load in diffusers itself
        model.pipeline.load_lora_weights(str(by_format[fmt]), adapter_name=f"direct_{fmt}")
        assert np.abs(render(model) - reference).max() <= 1e-5, fmt


def test_layouts_diffusers_loads_as_a_silent_no_op_are_applied(model, files, tmp_path):
    """Layouts diffusers skips with a warning (0 modules) are converted and applied in full."""
    original, by_format = files
    reference = render(model, [LoraRequest(original)])
    canon = load_canonical(original)  # alpha != rank: the variants below must carry it themselves
    variants = {"lora_transformer_diffusers_names": {}, "model_diffusion_model": {}, "bare_original_names": {},
                "comfyui_with_alpha_keys": {}}
    for name, m in canon.modules.items():
        orig, alpha = module_to_original(name), torch.tensor(m.alpha)
        stem = "lora_transformer_" + name.replace(".", "_")
        variants["lora_transformer_diffusers_names"].update(
            {f"{stem}.lora_down.weight": m.down, f"{stem}.lora_up.weight": m.up, f"{stem}.alpha": alpha})
        for variant, prefix in (("model_diffusion_model", "model.diffusion_model."), ("bare_original_names", ""),
                                ("comfyui_with_alpha_keys", "diffusion_model.")):
            variants[variant].update({f"{prefix}{orig}.lora_A.weight": m.down, f"{prefix}{orig}.lora_B.weight": m.up,
                                      f"{prefix}{orig}.alpha": alpha})
    for variant, tensors in variants.items():
        path = _save(tmp_path, variant, tensors)
        applied = apply_loras(model.pipeline, [LoraRequest(path)])
        assert applied[0].modules == len(canon.modules) == 40, variant
        again = apply_loras(model.pipeline, [LoraRequest(path)])  # the same file again replaces its adapter
        assert again[0].modules == 40 and model.pipeline.get_list_adapters()["transformer"] == [again[0].name]
        model.pipeline.unload_lora_weights()
        assert np.abs(render(model, [LoraRequest(path)]) - reference).max() <= 1e-5, variant


# --- bad input: each class has its error, naming the file and the module or key -------------------------


def _save(tmp_path, name, tensors, metadata=None):
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_bad_files_name_their_problem(model, files, tmp_path):
    import re

    good = load_file(str(files[1]["diffusers"]))
    q = "transformer.transformer_blocks.0.attn.to_q"

    def pair(a=(4, 32), b=(32, 4), a_fill=0.0, b_fill=0.0, prefix=q):
        return {f"{prefix}.lora_A.weight": torch.full(a, a_fill), f"{prefix}.lora_B.weight": torch.full(b, b_fill)}

    cases = {  # name: (tensors, what the error must say, literally)
        "unmatched": ({k.replace("transformer_blocks", "blocks_that_do_not_exist"): v for k, v in good.items()},
                      "does not fit a Krea 2 transformer: 32 of its 80 keys name no Krea 2 Linear layer "
                      "(e.g. transformer.blocks_that_do_not_exist"),
        "wider": (pair(a=(4, 64)), "module transformer_blocks.0.attn.to_q: the model's weight is (out, in) = "
                                   "(32, 32) but the LoRA's is (32, 64)"),
        "deeper": (pair(prefix=q.replace(".0.", ".5.")), "module transformer_blocks.5.attn.to_q does not exist"),
        "nan": (pair(a_fill=float("nan")), f"{q}.lora_A.weight (module transformer_blocks.0.attn.to_q) holds NaN"),
        "inf": (pair(b_fill=float("inf")), f"{q}.lora_B.weight (module transformer_blocks.0.attn.to_q) holds NaN or inf"),
        "no_lora": ({"img_in.weight": torch.zeros(32, 16)}, "has no LoRA tensors"),
        "half_pair": ({f"{q}.lora_A.weight": torch.zeros(4, 32)},
                      f"module transformer_blocks.0.attn.to_q has {q}.lora_A.weight but no up tensor"),
        "rank_clash": (pair(b=(32, 3)), "(4, 32) and transformer.transformer_blocks.0.attn.to_q.lora_B.weight (32, 3) "
                                        "are not a LoRA pair"),
        "dora_shape": ({**pair(), f"{q}.lora_magnitude_vector": torch.ones(31)},
                       f"DoRA magnitude {q}.lora_magnitude_vector has shape (31,); module transformer_blocks.0.attn.to_q "
                       "has 32 output rows"),
        "dora_mixed": ({**pair(), **pair(prefix=q.replace("to_q", "to_k")), f"{q}.lora_magnitude_vector": torch.ones(32)},
                       "mixes DoRA and plain LoRA modules (1 have a magnitude vector, 1 do not"),
        "kohya_unknown": (pair(prefix="lora_unet_blocks_0_attn_qkv"),
                          "name no Krea 2 Linear layer (e.g. lora_unet_blocks_0_attn_qkv.lora_A.weight"),
    }
    for name, (tensors, message) in cases.items():
        path = _save(tmp_path, name, tensors)
        with pytest.raises(WeightshopError, match=re.escape(message)) as err:
            apply_loras(model.pipeline, [LoraRequest(path)])
        assert str(path) in str(err.value), name
    assert not model.pipeline.get_list_adapters()  # nothing half-loaded

    full = _save(tmp_path, "full", {"txtfusion.projector.weight": torch.zeros(1, 3), "first.weight": torch.zeros(32, 16)})
    with pytest.raises(WeightshopError, match="full Krea 2 transformer checkpoint, not a LoRA"):
        load_canonical(full)
    data = files[1]["diffusers"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(WeightshopError, match=r"truncated.safetensors is truncated: its tensors need \d+ bytes"):
        apply_loras(model.pipeline, [LoraRequest(truncated)])
    pickled = tmp_path / "pickled.safetensors"
    torch.save({"a": torch.zeros(2)}, pickled)
    with pytest.raises(WeightshopError, match="pickled.safetensors is a zip archive .*never unpickles"):
        apply_loras(model.pipeline, [LoraRequest(pickled)])
    (tmp_path / "x.pt").write_bytes(b"x")
    with pytest.raises(WeightshopError, match="x.pt is not .safetensors"):
        apply_loras(model.pipeline, [LoraRequest(tmp_path / "x.pt")])


def test_alpha_comes_from_alpha_keys_then_metadata_then_rank():
    a, b = torch.ones(2, 3), torch.ones(5, 2)
    keyed = to_canonical({"diffusion_model.first.lora_A.weight": a, "diffusion_model.first.lora_B.weight": b,
                          "diffusion_model.first.alpha": torch.tensor(1.0)})
    assert keyed.modules["img_in"].scale == 0.5 and keyed.alpha_sources == {"alpha keys": 1}
    meta = {"lora_adapter_metadata": json.dumps({"transformer.lora_alpha": 8, "transformer.use_rslora": True})}
    rs = to_canonical({"transformer.img_in.lora_A.weight": a, "transformer.img_in.lora_B.weight": b}, meta)
    assert rs.modules["img_in"].scale == pytest.approx(8 / 2 ** 0.5)  # rsLoRA: alpha / sqrt(rank)
    bare = to_canonical({"transformer.img_in.lora_A.weight": a, "transformer.img_in.lora_B.weight": b})
    assert bare.modules["img_in"].scale == 1.0 and bare.alpha_sources == {"absent": 1}


# --- CLI ----------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_inspect_and_convert(files, tmp_path):
    _, by_format = files
    result = runner.invoke(app, ["lora", "inspect", str(by_format["kohya"]), "--json", "--plot", str(tmp_path / "n.png")])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "kohya" and report["modules"] == 40 and report["ranks"] == {"2": 20, "4": 20}
    assert report["base_model"] == "krea2-tiny"
    fits = {f["model"]: f["fits"] for f in report["fits"]}
    assert fits["krea2"] is False and fits["krea2-tiny"] is True
    assert "attn.to_out.0" in report["targets"] and "txt_in.linear_1" in report["targets"]
    assert [b["block"] for b in report["blocks"]][:2] == ["img_in", "time_embed.linear_1"]
    assert report["blocks"][-1]["block"] == "final_layer.linear"
    canon = load_canonical(by_format["kohya"])
    norm = sum(float(torch.linalg.matrix_norm(m.delta())) ** 2 for n, m in canon.modules.items()
               if n.startswith("transformer_blocks.1.")) ** 0.5
    block1 = next(b for b in report["blocks"] if b["block"] == "transformer_blocks.1")
    assert block1["norm"] == pytest.approx(norm, rel=1e-5)
    assert any("diffusers' load_lora_weights cannot apply this file" in w for w in report["warnings"])
    assert report["diffusers_loads_as_is"] is False
    from PIL import Image

    assert Image.open(tmp_path / "n.png").size[1] > 14 * len(report["blocks"])

    against = runner.invoke(app, ["lora", "inspect", str(by_format["diffusers"]), "--model", "krea2-tiny-nope", "--json"])
    assert against.exit_code == 2 and "not found" in against.stderr

    out = tmp_path / "c.safetensors"
    result = runner.invoke(app, ["lora", "convert", str(by_format["kohya"]), "--to", "comfyui", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"path": str(out), "from": "kohya", "to": "comfyui", "modules": 40}
    assert detect_format(load_file(str(out))) == "comfyui"
    bad = runner.invoke(app, ["lora", "convert", str(out), "--to", "onnx", "-o", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "unknown LoRA format 'onnx'" in bad.stderr


def test_inspect_warns_about_missing_alpha_and_unmatched_keys(files, tmp_path):
    """A diffusers file without lora_adapter_metadata, plus keys that name nothing: warned, not refused."""
    from weightshop.lora.inspect import inspect_lora

    good = load_file(str(files[1]["diffusers"]))
    path = _save(tmp_path, "odd", {**good, "transformer.nowhere.lora_A.weight": torch.zeros(2, 2),
                                   "transformer.nowhere.lora_B.weight": torch.zeros(2, 2)})
    clean = inspect_lora(files[1]["diffusers"])
    assert clean["warnings"] == [] and clean["diffusers_loads_as_is"] and clean["alpha_sources"] == {"metadata": 40}
    comfy = inspect_lora(files[1]["comfyui"])  # weightshop's own fold is declared, so no "alpha missing" warning
    assert comfy["warnings"] == [] and comfy["alpha_sources"] == {"folded": 40}
    report = inspect_lora(path)
    assert any("no alpha for 40 modules in metadata" in w for w in report["warnings"])
    assert any("2 keys name no Krea 2 Linear layer" in w for w in report["warnings"])
