"""The CLI end to end: JSON on stdout, clear errors with exit 2, files written."""

import json

import pytest
from typer.testing import CliRunner

from weightshop.cli.main import app
from weightshop.generate import read_image_record

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_only_working_commands():
    import typer

    result = run("--help")
    assert result.exit_code == 0
    commands = set(typer.main.get_command(app).commands)
    assert commands == {"doctor", "info", "generate", "demo", "nano", "data", "train", "plan", "lora", "transfer",
                        "bench", "eval", "quantize", "serve", "version"}
    for command in commands:
        assert command in result.stdout


def test_doctor_json():
    result = run("doctor", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["krea2_in_diffusers"] and report["problems"] == []
    assert "torch" in report and "gpus" in report and "bitsandbytes" in report["extras"]


def test_doctor_flags_broken_installs():
    from weightshop.doctor import problems

    assert any("outside the supported range" in p for p in problems({"diffusers": "0.36.0", "krea2_in_diffusers": False,
                                                                      "transformers": "5", "peft": "1", "accelerate": "1",
                                                                      "safetensors": "1", "tokenizers": "1"}))
    assert any("torchvision" in p for p in problems({"diffusers": "0.42.1", "krea2_in_diffusers": True,
                                                      "torchvision_installed": True, "torchvision_works": False}))


def test_generate_writes_images_and_json(tiny_dirs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red circle\n\na blue square\n")
    result = run("generate", "-m", tiny_dirs[1], "--prompt-file", prompts, "--seed", 5, "--count", 2,
                 "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["steps"], out["guidance"], out["mu"]) == (8, 0.0, 1.15)
    assert [(i["prompt"], i["seed"]) for i in out["images"]] == [
        ("a red circle", 5), ("a red circle", 6), ("a blue square", 5), ("a blue square", 6)]
    assert read_image_record(out["images"][3]["path"])["seed"] == 6


def test_generate_errors_exit_2_with_a_message(tiny_dirs, tmp_path):
    bad_size = run("generate", "-m", tiny_dirs[0], "-p", "x", "--width", 36)
    assert bad_size.exit_code == 2 and "width 36 is not a multiple of 8" in bad_size.stderr
    missing = run("generate", "-m", tmp_path / "nowhere", "-p", "x")
    assert missing.exit_code == 2 and "not found" in missing.stderr
    no_prompt = run("generate", "-m", tiny_dirs[0])
    assert no_prompt.exit_code == 2 and "at least one prompt" in no_prompt.stderr
    bad_lora = run("generate", "-m", tiny_dirs[0], "-p", "x", "--lora", tmp_path / "none.safetensors")
    assert bad_lora.exit_code == 2 and "does not exist" in bad_lora.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert "has no prompts" in run("generate", "-m", tiny_dirs[0], "--prompt-file", empty).stderr


def test_info_json(tiny_dirs):
    result = run("info", tiny_dirs[0], "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["checkpoint"] == "raw" and info["preset"]["mu_rule"] == "resolution-aware"


def test_demo_json(tmp_path):
    result = run("demo", "--workdir", tmp_path, "--json", "--quick")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    rows = summary["stages"]["generate"]["table"]
    assert len(rows) >= 2 and rows[0]["seconds_per_image"] > 0
    curate = summary["stages"]["curate"]
    assert curate["planted_faults_caught"] == {"corrupt": True, "duplicate": True, "watermark": True,
                                               "missing_caption": True}
    assert curate["auto_captioned"] == 1 and curate["cache_second_run_encoded"] == 0
    assert (tmp_path / "curate" / "report.html").is_file() and (tmp_path / "curate" / "dataset.json").is_file()
    assert summary["stages"]["generate"]["turbo_speedup"] > 1
    speed = summary["stages"]["generate"]["vs_stock"]
    assert speed["stock_s"] > 0 and speed["weightshop_s"] > 0 and speed["repeats"] == 3
    assert "stock diffusers" in (tmp_path / "report.html").read_text()
    train = summary["stages"]["train"]
    assert train["steps"] >= 1 and train["modules_injected_on_turbo"] == train["modules"] > 0
    transfer = summary["stages"]["transfer"]
    assert transfer["recommended_strength"] in (0.5, 1.0, 1.5)
    assert (tmp_path / "transfer" / "transfer.json").is_file() and transfer["comfyui"]
    quantize = summary["stages"]["quantize"]
    assert {(r["format"], r["lora"]) for r in quantize["table"]} == {(f, lora) for f in ("fp8", "int8", "q8_0")
                                                                       for lora in ("no", "yes")}
    assert all(0 < r["size vs ref"] < 1 for r in quantize["table"])
    chosen = [r for r in quantize["table"] if r["format"] == quantize["chosen"]]
    assert quantize["chosen"] is None or all(r["gate"] == "pass" for r in chosen)
    assert (tmp_path / "quantize" / "report.html").is_file()
    serve = summary["stages"]["serve"]
    assert serve["latency_s"] > 0 and serve["cost_per_image"] > 0 and serve["lora"]
    assert serve["model"] == (quantize["chosen_path"] or serve["model"])
    assert (tmp_path / "report.html").read_text().count("<img") == 2  # the generate grid and the drift plot


def test_nano_card_without_a_build_record_is_a_clear_error(tmp_path):
    import pytest

    from weightshop.errors import WeightshopError
    from weightshop.nano.build import NanoRecipe
    from weightshop.nano.card import read_build_record, write_card

    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "build.json").write_text('{"stages": {')
    cases = {tmp_path / "nowhere": "does not exist", empty: "has no build record (build.json)",
             broken: "is not a readable build record"}
    for workdir, message in cases.items():
        result = run("nano", "card", "--workdir", workdir)
        assert result.exit_code == 2, (workdir, result.output, result.exception)
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and str(workdir) in lines[0] and message in lines[0], result.stderr
        assert "--workdir" in lines[0] and "weightshop nano build" in lines[0]  # what is expected there
        with pytest.raises(WeightshopError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_build_record(workdir)
    # Python: a family root without a packaged family fails before anything is measured.
    record = {"stages": {}, "recipe": {"transformer": {}}}
    with pytest.raises(WeightshopError, match=f"{empty} holds no packaged nano family"):
        write_card(empty, record, NanoRecipe())
    with pytest.raises(WeightshopError, match="not a nano build record"):
        write_card(empty, {"stages": {}}, NanoRecipe())


def test_progress_in_a_log_shows_rate_and_time_left(capsys, monkeypatch):
    """Not a terminal (a log, CI): each line carries this sitting's rate and the time left to the run's total."""
    import time as time_module

    from weightshop.cli.common import _pace, step_progress

    assert _pace(10, 4.0, 30) == "2.50 it/s, ETA 0m12s"
    assert _pace(2, 10.0, 720) == "5.00 s/it, ETA 1h00m" and _pace(0, 5.0, 10) == ""
    clock = iter([0.0, 0.0, 40.0, 80.0])
    monkeypatch.setattr(time_module, "monotonic", lambda: next(clock))
    with step_progress("train", every_s=30) as log:
        log("train", 100, 600, {"loss": 0.5})  # a resumed sitting: starts at step 100 of 600
        log("train", 140, 600, {"loss": 0.4})
        log("train", 180, 600, {"loss": 0.3})
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert lines[-1].endswith("train: 180/600 loss 0.3 1.00 it/s, ETA 7m00s"), lines


def test_cpu_threads_leave_a_core_free_unless_told(monkeypatch):
    import os

    from weightshop.models.device import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    assert cpu_threads() == max(1, len(os.sched_getaffinity(0)) - 1)


def test_train_help_says_that_running_again_resumes():
    out = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert out.exit_code == 0 and "There is no --resume flag: run the same command again" in " ".join(out.output.split())
