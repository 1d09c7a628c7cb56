"""DoRA files: the math, every layout, applied exactly as peft computes it, merged to the same weights,
resized with their magnitudes, refused where they cannot be combined, and trained end to end."""

import itertools
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from weightshop.errors import WeightshopError
from weightshop.lora import FORMATS, LoraRequest, apply_loras, convert_file, load_canonical
from weightshop.lora.formats import CanonicalLora, LoraModule, adapted_weight, linear_shapes, save_canonical
from weightshop.lora.inspect import inspect_lora
from weightshop.lora.ops import combine, merge_file, merge_into, resize
from weightshop.models.loading import load_model
from tests.lora.test_formats import make_lora
from tests.lora.test_ops import pixels, transformer_out

ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")


def make_dora(transformer, seed=0, rank=4, alpha=8.0) -> CanonicalLora:
    """A DoRA on the attention Linears of `transformer` (alpha != rank); magnitudes 0.5-1.5x the rows' norms."""
    g = torch.Generator().manual_seed(seed)
    layers = dict(transformer.named_modules())
    modules = {}
    for name, (out, inp) in linear_shapes(transformer).items():
        if name.endswith(ATTENTION):
            w = layers[name].weight.detach()
            magnitude = torch.linalg.vector_norm(w, dim=1) * (0.5 + torch.rand(out, generator=g))
            modules[name] = LoraModule(torch.randn(rank, inp, generator=g) * 0.3,
                                       torch.randn(out, rank, generator=g) * 0.3, alpha, magnitude)
    return CanonicalLora(modules, {"weightshop": json.dumps({"trigger": "zq"})})


@pytest.fixture(scope="module")
def base(tiny_dirs):
    """The tiny Raw, its Linear weights before any adapter, and a DoRA for it."""
    model = load_model(tiny_dirs[0], dtype="fp32")
    transformer = model.pipeline.transformer
    layers = dict(transformer.named_modules())
    weights = {name: layers[name].weight.detach().clone() for name in linear_shapes(transformer)}
    return model, weights, make_dora(transformer)


@pytest.fixture(scope="module")
def dora_files(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("dora")
    return {fmt: save_canonical(base[2], root / f"{fmt}.safetensors", fmt) for fmt in FORMATS}


def test_adapted_weight_math():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 5, generator=g)
    plain = LoraModule(torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g), 4.0)
    for s in (1.0, 0.5, -0.3):
        torch.testing.assert_close(adapted_weight(w, plain, s), w + s * plain.delta())
    m = torch.rand(6, generator=g) + 0.5
    dora = LoraModule(plain.down, plain.up, plain.alpha, m)
    for s in (1.0, 0.5, 2.0):
        got, v = adapted_weight(w, dora, s), w + s * plain.delta()
        torch.testing.assert_close(torch.linalg.vector_norm(got, dim=1), m)  # every row has its magnitude
        cosine = (got * v).sum(1) / (got.norm(dim=1) * v.norm(dim=1))
        torch.testing.assert_close(cosine, torch.ones(6))  # ... in the direction of W + s * delta
    # DoRA at its initialisation (m = the rows' norms of W + delta) is the plain LoRA at strength 1
    start = LoraModule(plain.down, plain.up, plain.alpha, torch.linalg.vector_norm(w + plain.delta(), dim=1))
    torch.testing.assert_close(adapted_weight(w, start), w + plain.delta())
    # strength 0 keeps m: DoRA does not vanish at strength 0 the way a LoRA does (peft's semantics)
    assert not torch.allclose(adapted_weight(w, dora, 0.0), w)


def test_every_layout_names_and_round_trips_the_magnitudes(base, dora_files, tmp_path):
    canon = base[2]
    name = "transformer_blocks.0.attn.to_q"
    keys = {fmt: load_file(str(p)) for fmt, p in dora_files.items()}
    assert keys["diffusers"][f"transformer.{name}.lora_magnitude_vector"].shape == (32,)
    assert keys["aitoolkit"]["base_model.model.blocks.0.attn.wq.lora_magnitude_vector"].shape == (32,)
    assert keys["comfyui"]["diffusion_model.blocks.0.attn.wq.dora_scale"].shape == (32, 1)  # ComfyUI's name
    assert keys["kohya"]["lora_unet_blocks_0_attn_wq.dora_scale"].shape == (32, 1)
    with safe_open(str(dora_files["diffusers"]), "pt") as f:
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.use_dora"] is True
    for a, b in itertools.permutations(FORMATS, 2):
        back = load_canonical(convert_file(convert_file(dora_files[a], tmp_path / f"{a}-{b}.safetensors", b),
                                           tmp_path / f"{a}-{b}-{a}.safetensors", a))
        assert back.modules.keys() == canon.modules.keys()
        for n, m in canon.modules.items():
            assert torch.equal(back.modules[n].magnitude, m.magnitude), (a, b, n)
            torch.testing.assert_close(back.modules[n].delta(), m.delta(), rtol=1e-6, atol=1e-7)
    report = inspect_lora(dora_files["comfyui"])
    assert report["dora"] and any("DoRA" in w for w in report["warnings"])
    assert report["parameters"] == sum(m.down.numel() + m.up.numel() + m.magnitude.numel()
                                       for m in canon.modules.values())


def test_applied_as_peft_computes_it_in_every_layout(base, dora_files):
    model, weights, canon = base
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(2))
    try:
        for fmt, strength in zip(FORMATS, (1.0, 0.5, 1.0, -0.5)):
            applied = apply_loras(model.pipeline, [LoraRequest(dora_files[fmt], strength)])
            assert applied[0].modules == len(canon.modules) == 4 * 4
            layers = dict(model.pipeline.transformer.named_modules())  # the peft-wrapped layers
            for name, module in canon.modules.items():
                layer = layers[name]
                assert torch.equal(layer.lora_magnitude_vector[applied[0].name].weight.detach(), module.magnitude)
                want = torch.nn.functional.linear(x, adapted_weight(weights[name], module, strength),
                                                  layer.base_layer.bias)
                with torch.no_grad():
                    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5, msg=f"{fmt} {name}")
            model.pipeline.unload_lora_weights()
    finally:
        model.pipeline.unload_lora_weights()


def test_merged_dora_with_a_lora_equals_both_applied(tiny_dirs, base, dora_files, tmp_path):
    """With several adapters peft scales what came before a DoRA (base and earlier LoRAs) by the DoRA's row
    factor: merging in the order the LoRAs are applied gives the same weights, in either order."""
    plain = save_canonical(make_lora(base[0].pipeline.transformer, seed=3), tmp_path / "plain.safetensors", "kohya")
    for order in ((LoraRequest(plain, 0.7), LoraRequest(dora_files["kohya"], 0.8)),
                  (LoraRequest(dora_files["diffusers"], 0.8), LoraRequest(plain, 0.7))):
        model = load_model(tiny_dirs[0], dtype="fp32")
        base_out = transformer_out(model.pipeline.transformer)
        pixels(model, list(order))
        want = transformer_out(model.pipeline.transformer)
        assert (want - base_out).abs().max() > 0.1
        out = tmp_path / f"merged-{order[0].path.stem}"
        merge_file(list(order), tiny_dirs[0], out)
        merged = load_model(out, dtype="fp32")
        torch.testing.assert_close(transformer_out(merged.pipeline.transformer), want, atol=1e-4, rtol=1e-4)
    # the pure function, one module: LoRA first, then the DoRA rescales the rows of everything so far
    _, weights, canon = base
    name = "transformer_blocks.1.attn.to_v"
    lora, dora = load_canonical(plain).modules[name], canon.modules[name]
    state = {f"{n}.weight": w.clone() for n, w in weights.items()}
    unmerged = dict(state)
    merge_into(state, load_canonical(plain), 0.7, base=unmerged)
    merge_into(state, canon, 0.8, base=unmerged)
    w0 = weights[name]
    factor = dora.magnitude / torch.linalg.vector_norm(w0 + 0.8 * dora.delta(), dim=1)
    expected = factor[:, None] * (w0 + 0.7 * lora.delta() + 0.8 * dora.delta())
    torch.testing.assert_close(state[f"{name}.weight"], expected, rtol=1e-5, atol=1e-6)
    single = {f"{name}.weight": w0.clone()}  # alone, merge is adapted_weight
    merge_into(single, canon, 0.8)
    torch.testing.assert_close(single[f"{name}.weight"], adapted_weight(w0, dora, 0.8), rtol=1e-5, atol=1e-6)


def test_resize_keeps_magnitudes_and_combine_refuses(base):
    canon = base[2]
    small, report = resize(canon, rank=2)
    assert all(m.rank == 2 and torch.equal(m.magnitude, canon.modules[n].magnitude) for n, m in small.modules.items())
    assert 0 < report["energy_kept"] < 1
    with pytest.raises(WeightshopError, match="it is a DoRA .* does not add to another LoRA's"):
        combine([(canon, 1.0), (canon, 0.5)])
