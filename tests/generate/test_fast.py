"""The fast path: weightshop's loop equals stock diffusers exactly; trimmed text and batched guidance stay within
1e-3 of it; the text-trimming helpers are exact; the step cache is off by default and measurable when on."""

import numpy as np
import pytest
import torch

from weightshop.generate import GenerateRequest, generate, plan
from weightshop.generate.fast import STOCK, FastPath, sample, stage_clock
from weightshop.generate.text import PromptCache, compact, pad_to

PROMPT = "a red circle above a blue square"


def render(model, fast: FastPath, steps: int = 4, negative: str = "blurry"):
    p = plan(model, GenerateRequest(prompts=[PROMPT], steps=steps))
    cache = PromptCache(model.pipeline, p.max_sequence_length, "t", trim=fast.trim_text)
    with torch.no_grad():
        embeds, mask = cache.get([PROMPT])
        neg = cache.get([negative]) if p.preset.guidance > 0 else None
    return sample(model.pipeline, embeds, mask, height=p.height, width=p.width, steps=p.preset.steps,
                  guidance=p.preset.guidance, mu=p.mu, generators=[torch.Generator().manual_seed(0)], negative=neg,
                  fast=fast)


def stock(model, steps: int = 4, negative: str = "blurry"):
    p = plan(model, GenerateRequest(prompts=[PROMPT], steps=steps))
    return model.pipeline(prompt=[PROMPT], negative_prompt=[negative], height=p.height, width=p.width,
                          num_inference_steps=steps, guidance_scale=p.preset.guidance,
                          generator=[torch.Generator().manual_seed(0)], max_sequence_length=p.max_sequence_length,
                          output_type="pt").images


def test_own_loop_equals_stock_and_trimming_stays_within_tolerance(tiny_raw):
    reference = stock(tiny_raw)
    assert torch.equal(render(tiny_raw, FastPath(trim_text=False, batch_guidance=False)), reference)
    for fast in (FastPath(trim_text=False), FastPath(batch_guidance=False), FastPath()):
        assert (render(tiny_raw, fast) - reference).abs().max() <= 1e-3, fast


def test_generate_default_and_stock_call_agree(tiny_raw):
    req = dict(prompts=[PROMPT], seeds=[1], steps=3, negative_prompt="blurry")
    fast = np.asarray(generate(tiny_raw, GenerateRequest(**req))[0].image, dtype=np.int16)
    slow = np.asarray(generate(tiny_raw, GenerateRequest(**req, fast=STOCK))[0].image, dtype=np.int16)
    assert np.abs(fast - slow).max() <= 1  # float images within 1e-3: a rounding step at most


def test_compact_moves_real_tokens_together_exactly():
    embeds = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1)
    mask = torch.tensor([[1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    out, new_mask = compact(embeds, mask)
    assert out[..., 0].tolist() == [[0, 1, 5], [6, 10, 11]] and new_mask.all()
    padded, padded_mask = pad_to(out, new_mask, 5)
    assert padded.shape == (2, 5, 1) and padded_mask.sum().item() == 6 and padded[:, 3:].abs().sum() == 0


def test_trimmed_cache_encodes_only_real_tokens(tiny_raw):
    p = plan(tiny_raw, GenerateRequest(prompts=[PROMPT]))
    padded = PromptCache(tiny_raw.pipeline, p.max_sequence_length, "a")
    trimmed = PromptCache(tiny_raw.pipeline, p.max_sequence_length, "a", trim=True)
    with torch.no_grad():
        e, m = padded.get([PROMPT])
        t, tm = trimmed.get([PROMPT])
    assert e.shape[1] == p.max_sequence_length and tm.all() and t.shape[1] == int(m.sum()) < e.shape[1]
    assert (compact(e, m)[0] - t).abs().max() < 1e-4  # the encoder without its padding: the same real tokens
    both, both_mask = trimmed.get([PROMPT, ""])
    assert both.shape[1] == t.shape[1] and both_mask[1].sum() < both_mask[0].sum()


def test_step_cache_is_off_by_default_and_skips_steps_when_on(tiny_raw):
    with stage_clock() as clock:
        base = render(tiny_raw, FastPath(), steps=8)
    assert clock.cached_steps == 0 and len(clock.steps) == 8 and len(clock.decode) == 1
    with stage_clock() as clock:
        cached = render(tiny_raw, FastPath(step_cache=10.0), steps=8)
    assert clock.cached_steps > 0
    assert 0 < (cached - base).abs().max() < 1


def test_unbatched_guidance_branches_reuse_the_cache_at_the_same_steps(tiny_raw):
    """Guidance branches run one after the other: the negative branch follows the positive one's cache decision,
    so at a cached step neither runs the later blocks (counted on the last block) and no step mixes the two."""
    last = tiny_raw.pipeline.transformer.transformer_blocks[-1]
    calls = []
    handle = last.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with stage_clock() as clock:
            render(tiny_raw, FastPath(batch_guidance=False, step_cache=10.0), steps=8)
    finally:
        handle.remove()
    full_steps = 8 - clock.cached_steps
    assert clock.cached_steps > 0 and len(calls) == 2 * full_steps  # two branches at each full step, none else


def test_fp8_matmul_refused_without_the_hardware(tiny_raw):
    from weightshop.errors import WeightshopError
    from weightshop.generate.fast import fp8_matmul_available, speed_up

    if fp8_matmul_available("cuda" if torch.cuda.is_available() else "cpu"):
        pytest.skip("this machine has float8 matmuls")
    with pytest.raises(WeightshopError, match="float8"):
        speed_up(tiny_raw, fp8_matmul=True)


@pytest.fixture
def fresh_raw(tiny_dirs):
    """A model of its own: speed_up changes a model in place."""
    from weightshop.models.loading import load_model

    return load_model(tiny_dirs[0], dtype="fp32")


def test_int8_matmuls_on_cpu_stay_close_and_are_recorded(fresh_raw):
    from weightshop.generate.fast import speed_up
    from weightshop.quant.layers import Int8MatmulLinear

    before = render(fresh_raw, FastPath())
    done = speed_up(fresh_raw, int8_matmul=True)
    layers = [m for m in fresh_raw.pipeline.transformer.modules() if isinstance(m, Int8MatmulLinear)]
    assert done["int8_matmul"] == len(layers) > 0
    after = render(fresh_raw, FastPath())
    assert 0 < (after - before).abs().max() < 0.1  # int8 activations and weights: a visible but small change
    record = generate(fresh_raw, GenerateRequest(prompts=[PROMPT], steps=2, fast=FastPath(step_cache=0.5)))[0].record
    assert record["matmuls"] == {"int8_matmul": len(layers)} and record["step_cache"] == 0.5


def test_speed_options_refused_with_their_reason(tiny_raw):
    from weightshop.errors import WeightshopError
    from weightshop.generate.fast import check_speed_options, speed_up

    with pytest.raises(WeightshopError, match="pick one"):
        check_speed_options("cpu", fp8_matmul=True, int8_matmul=True)
    if not torch.cuda.is_available():
        with pytest.raises(WeightshopError, match="CUDA graphs .* need a CUDA device"):
            speed_up(tiny_raw, cuda_graphs=True)
    with pytest.raises(WeightshopError, match="int8 matmuls"):
        check_speed_options("meta", int8_matmul=True)
    with pytest.raises(WeightshopError, match="step cache threshold"):
        GenerateRequest(prompts=["x"], fast=FastPath(step_cache=float("nan"))).validate()


def test_cuda_graphs_path_compiles_blocks_in_reduce_overhead_mode(fresh_raw, monkeypatch):
    """The CUDA-graphs option without a GPU: the compile call it makes and the loop's step marks (compile itself is
    replaced: it needs CUDA), and the images stay those of the eager loop."""
    from weightshop.generate import fast

    calls = []
    monkeypatch.setattr(fast, "check_speed_options", lambda *a, **k: None)
    monkeypatch.setattr(type(fresh_raw.pipeline.transformer), "compile_repeated_blocks",
                        lambda self, **kwargs: calls.append(kwargs))
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    before = render(fresh_raw, FastPath(), steps=3)
    assert fast.speed_up(fresh_raw, cuda_graphs=True, compile=True)["cuda_graphs"] > 0
    assert calls == [{"dynamic": False, "mode": "reduce-overhead"}]
    assert torch.equal(render(fresh_raw, FastPath(), steps=3), before) and len(marks) == 3
    assert fast.runs_own_loop(fresh_raw, FastPath())  # the loop's own step marks: its hook does not count
    marks.clear()
    stock(fresh_raw, steps=2)  # a stock call marks each transformer forward (two guided steps, two branches each)
    assert len(marks) == 4


def test_a_hook_on_the_whole_transformer_turns_the_own_loop_off(fresh_raw):
    """A diffusers or accelerate hook on the transformer (a cache, layerwise casting) lives in its forward, which
    weightshop's loop never calls: generate then takes the stock call, and the hook runs."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    from weightshop.generate import fast

    class Count(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Count.calls += 1
            return args, kwargs

    transformer = fresh_raw.pipeline.transformer
    assert fast.runs_own_loop(fresh_raw, FastPath())
    add_hook_to_module(transformer, Count())
    try:
        assert not fast.runs_own_loop(fresh_raw, FastPath())
        generate(fresh_raw, GenerateRequest(prompts=[PROMPT], steps=2))
        assert Count.calls == 4  # the stock call: two guided steps, a forward per branch
    finally:
        remove_hook_from_module(transformer)
    assert fast.runs_own_loop(fresh_raw, FastPath())


def test_generate_cli_speed_flags(tiny_dirs, tmp_path):
    import json

    from typer.testing import CliRunner

    from weightshop.cli.main import app

    def run(*args):
        return CliRunner().invoke(app, ["generate", "-m", str(tiny_dirs[0]), "-p", "x", "--device", "cpu",
                                        "--steps", "2", "-o", str(tmp_path), *map(str, args)])

    graphs = run("--cuda-graphs")
    assert graphs.exit_code == 2 and "CUDA graphs" in graphs.stderr
    offloaded = run("--step-cache", "0.2", "--offload", "model")
    assert offloaded.exit_code == 2 and "--offload none" in offloaded.stderr
    negative = run("--step-cache", "-1")
    assert negative.exit_code == 2 and "step cache threshold" in negative.stderr
    ok = run("--int8-matmul", "--step-cache", "0.3", "--json")
    assert ok.exit_code == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["speed_up"]["int8_matmul"] > 0 and out["step_cache"] == 0.3
