"""An evaluation run on a tiny model: deterministic, cached by content (a re-run renders nothing, an interrupted
one only what is missing), every image judged per image, and the gate and CLI on top of it."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from weightshop.cli.main import app
from weightshop.eval.generation import ImageCache, render
from weightshop.eval.harness import evaluate, load_run
from weightshop.eval.suites import Suite, SuitePrompt, suite_jobs, write_suite
from weightshop.judge import JudgeIdentity

SUITE = Suite(name="tiny", seeds=[0, 1], width=32, height=32, prompts=[
    SuitePrompt(id="a", prompt="a red square", tags=["subject", "no-text"]),
    SuitePrompt(id="b", prompt="a blue circle", tags=["no-trigger", "no-text"]),
    SuitePrompt(id="c", prompt="green", tags=["no-trigger"], seeds=[5])])


class MeanJudge:
    """A stand-in judge: each image's mean brightness in [0, 1]."""

    name = "brightness"
    identity = JudgeIdentity("mean brightness", "", "1")

    def per_image(self, images, jobs):
        return {"concept": [float(np.asarray(im).mean() / 255) for im in images]}

    def score(self, images, jobs):
        return {k: float(np.mean(v)) for k, v in self.per_image(images, jobs).items()}


@pytest.fixture(scope="module")
def tiny_turbo(tiny_dirs):
    from weightshop.models.loading import load_model

    return load_model(tiny_dirs[1], dtype="fp32")


@pytest.fixture()
def counted(monkeypatch):
    """Count the images generate() makes."""
    import weightshop.generate as gen

    made = []
    real = gen.generate

    def counting(model, request, *a, **k):
        out = real(model, request, *a, **k)
        made.extend(out)
        return out

    monkeypatch.setattr(gen, "generate", counting)
    return made


def test_a_rerun_renders_nothing_and_an_interrupted_one_only_what_is_missing(tiny_turbo, tmp_path, counted):
    jobs = suite_jobs(SUITE)
    cache = ImageCache(tmp_path / "cache")
    first, keys, stats = render(tiny_turbo, jobs, cache, width=32, height=32, batch_size=2)
    assert stats == {"rendered": 5, "cached": 0, "seconds_per_image": stats["seconds_per_image"]} and len(counted) == 5
    again, keys2, stats2 = render(tiny_turbo, jobs, cache, width=32, height=32)
    assert keys2 == keys and stats2["rendered"] == 0 and len(counted) == 5
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))  # PNG is lossless
    cache.path(keys[1]).unlink()  # as if the first run had been killed before that image
    cache.path(keys[3]).write_bytes(b"\x89PNG cut short")
    third, _, stats3 = render(tiny_turbo, jobs, cache, width=32, height=32)
    assert stats3["rendered"] == 2 and len(counted) == 7
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, third))  # deterministic
    # anything that decides the pixels is in the key: another seed set gets its own images
    _, keys4, _ = render(tiny_turbo, suite_jobs(SUITE, seed_offset=100), cache, width=32, height=32)
    assert not set(keys4) & set(keys)


def test_evaluate_writes_per_image_metrics_and_reloads(tiny_turbo, tmp_path):
    run = evaluate(tiny_turbo, SUITE, tmp_path / "run", judges=[MeanJudge()], features=True, ocr=False)
    assert len(run.images) == 5 and all("brightness.concept" in im["metrics"] for im in run.images)
    assert run.judges["brightness"]["backend"] == "mean brightness" and "features" in run.judges
    s = run.summary["brightness.concept"]
    assert s["lo"] <= s["mean"] <= s["hi"] and s["n"] == 5
    assert run.set_metrics["diversity"] is not None and run.features().shape == (5, 1280)
    loaded = load_run(tmp_path / "run")
    assert loaded.values("brightness.concept") == run.values("brightness.concept")
    assert set(loaded.values("brightness.concept", "no-trigger")) == {("b", 0), ("b", 1), ("c", 0)}


def test_cli_run_then_gate_against_itself_passes(tiny_dirs, tmp_path):
    from PIL import Image

    suite = write_suite(SUITE, tmp_path / "tiny.yaml")
    runner = CliRunner()  # references for the training-set judge: a few images

    (tmp_path / "refs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "refs" / f"{i}.png")
    for name in ("a", "b"):
        out = runner.invoke(app, ["eval", "run", "-m", str(tiny_dirs[1]), "--suite", str(suite), "-o",
                                  str(tmp_path / name), "--train-images", str(tmp_path / "refs"), "--no-ocr", "--json"])
        assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert "image-stats.distance" in result["summary"] and "kid" in result["set_metrics"]
    out = runner.invoke(app, ["eval", "gate", str(tmp_path / "a"), str(tmp_path / "b"), "--json",
                              "-o", str(tmp_path / "gate.html")])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["passed"] and (tmp_path / "gate.html").is_file()
    out = runner.invoke(app, ["eval", "gate", str(tmp_path / "a"), str(tmp_path / "nowhere")])
    assert out.exit_code == 2 and "not found" in out.output


def test_cli_eval_lora_gives_a_verdict_with_its_reasons(tiny_dirs, tiny_turbo, tmp_path):
    """The release decision end to end on tiny models (plumbing: random weights mean nothing): four runs, the
    checks against the training images, the gate on no-trigger prompts, the verdict and its report."""
    from PIL import Image

    from tests.lora.test_formats import make_lora
    from weightshop.lora.formats import save_canonical

    lora = save_canonical(make_lora(tiny_turbo.pipeline.transformer), tmp_path / "style.safetensors")
    (tmp_path / "train").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "train" / f"{i}.png")
    suite = write_suite(SUITE, tmp_path / "tiny.yaml")
    out = CliRunner().invoke(app, ["eval", "lora", str(lora), "--raw", str(tiny_dirs[0]), "--turbo", str(tiny_dirs[1]),
                                   "--suite", str(suite), "--train-images", str(tmp_path / "train"),
                                   "--strength", "0.8", "--batch-size", "4", "-o", str(tmp_path / "eval"), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    v = result["verdict"]
    assert v["choice"] in ("turbo", "raw", "neither") and v["reasons"] and v["strength"] in (0.8, 1.0)
    assert set(result["runs"]) == {"raw", "raw+lora", "turbo", "turbo+lora"}
    assert result["gate"] is not None and "memorisation" in result["checks"]["turbo"]
    assert {o["checkpoint"] for o in v["options"]} == {"raw", "turbo"}
    assert all(o["dollars_per_image"] is not None for o in v["options"])
    assert (tmp_path / "eval" / "report.html").is_file() and (tmp_path / "eval" / "lora-eval.json").is_file()
    assert any("skipped" in s for s in result["skipped"])  # the real tier says why it did not run, never substitutes
