"""Fault injection over a run's checkpoint folder: every case resumes exactly from the newest checkpoint that
verifies (the final LoRA and the per-step losses bit-equal to an uninterrupted run) or stops with a one-line error,
and a valid checkpoint is never lost."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from tests.train.test_trainer import config, manifest_path  # noqa: F401  (manifest_path is a fixture)
from weightshop.errors import WeightshopError
from weightshop.train import checkpoints, train

STEPS = 4  # config(): 4 steps, a checkpoint every step


def run_config(tiny_dirs, manifest_path, out, **sets):
    return config(tiny_dirs, manifest_path, out, **{"output.keep_last": 3, **sets})


@pytest.fixture(scope="module")
def reference(tiny_dirs, manifest_path, tmp_path_factory):
    """An uninterrupted run (its LoRA and losses), and a run stopped after step 3 to copy for each fault."""
    root = tmp_path_factory.mktemp("ckpt")
    straight = train(run_config(tiny_dirs, manifest_path, root / "straight"))
    train(run_config(tiny_dirs, manifest_path, root / "stopped"), stop_after=3)
    return {"lora": tensors(straight["lora"]), "losses": losses(root / "straight"), "stopped": root / "stopped"}


def tensors(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def losses(run) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def resume(reference, tiny_dirs, manifest_path, tmp_path, fault, **sets):
    """Copy the stopped run, damage it with `fault(checkpoints_dir)`, run to the end; returns (result, run dir)."""
    run = tmp_path / "run"
    shutil.copytree(reference["stopped"], run)
    fault(run / "checkpoints")
    notes = []
    result = train(run_config(tiny_dirs, manifest_path, run, **sets), notify=notes.append)
    return result, run, notes


def assert_exact(reference, result, run):
    assert result["step"] == STEPS
    got = tensors(result["lora"])
    assert got.keys() == reference["lora"].keys()
    assert all(torch.equal(got[k], reference["lora"][k]) for k in got)  # bit-equal, not close
    assert losses(run) == reference["losses"]  # one row per step, the same losses


def truncate(name):
    def fault(ckpts):
        path = ckpts / "step-0000003" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return fault


def corrupt_in_place(ckpts):
    path = ckpts / "step-0000003" / "state.safetensors"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = b"\xff" * 4096  # same size: only a checksum can tell
    path.write_bytes(bytes(data))


def delete_latest(ckpts):
    shutil.rmtree(ckpts / "step-0000003")


@pytest.mark.parametrize("fault, damaged", [
    (truncate("state.safetensors"), "state.safetensors has"),
    (truncate("state.json"), "state.json has"),
    (corrupt_in_place, "state.safetensors does not match its sha256"),
])
def test_a_damaged_latest_checkpoint_is_named_set_aside_and_the_one_before_resumes(
        reference, tiny_dirs, manifest_path, tmp_path, fault, damaged):
    result, run, notes = resume(reference, tiny_dirs, manifest_path, tmp_path, fault)
    assert_exact(reference, result, run)
    assert any("step-0000003 is damaged" in n and damaged in n for n in notes), notes
    assert "resuming" in notes[-1] and "from step 2" in notes[-1]
    assert (run / "checkpoints" / "damaged" / "step-0000003").is_dir()  # kept for inspection, never deleted
    assert all("\n" not in n for n in notes)  # each a line


def test_a_deleted_latest_checkpoint_resumes_from_the_one_before(reference, tiny_dirs, manifest_path, tmp_path):
    result, run, notes = resume(reference, tiny_dirs, manifest_path, tmp_path, delete_latest)
    assert_exact(reference, result, run)
    assert any("step-0000003 named by latest.json is missing" in n for n in notes)
    assert "from step 2" in notes[-1]


@pytest.mark.parametrize("fault, said", [
    (lambda c: (c / "latest.json").unlink(), "latest.json is missing"),
    (lambda c: (c / "latest.json").write_text('{"step": 3, "di'), "latest.json is not valid JSON"),
])
def test_the_pointer_lost_or_truncated_the_newest_checkpoint_is_found_by_scanning(
        reference, tiny_dirs, manifest_path, tmp_path, fault, said):
    result, run, notes = resume(reference, tiny_dirs, manifest_path, tmp_path, fault)
    assert_exact(reference, result, run)
    assert any(said in n for n in notes) and "from step 3" in notes[-1]
    # pruning keeps the newest by step: the three newest survive, the new ones included
    assert [p.name for p in checkpoints.checkpoint_dirs(run / "checkpoints")] == [
        "step-0000004", "step-0000003", "step-0000002"]


def kill_during_save(ckpts):
    """A kill inside the next save: its temporary folder half written."""
    tmp = ckpts / ".step-0000004.tmp"
    tmp.mkdir()
    (tmp / "state.safetensors").write_bytes(b"\x00" * 100)


def kill_before_pointer(ckpts):
    """A kill after the rename and before latest.json moved: the pointer names an older checkpoint."""
    (ckpts / "latest.json").write_text(json.dumps({"step": 2, "dir": "step-0000002"}))


def kill_before_pruning(ckpts):
    """A kill between the pointer update and the pruning: one folder more than keep_last."""
    shutil.copytree(ckpts / "step-0000001", ckpts / "step-0000000")


@pytest.mark.parametrize("fault", [kill_during_save, kill_before_pointer, kill_before_pruning])
def test_a_kill_at_each_phase_of_a_save(reference, tiny_dirs, manifest_path, tmp_path, fault):
    result, run, notes = resume(reference, tiny_dirs, manifest_path, tmp_path, fault)
    assert_exact(reference, result, run)
    assert "from step 3" in notes[-1]
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["latest.json", "step-0000002", "step-0000003", "step-0000004"]  # no temp folder, keep_last 3


def test_no_valid_checkpoint_at_all_starts_fresh_and_says_why(reference, tiny_dirs, manifest_path, tmp_path):
    def ruin_all(ckpts):
        for d in checkpoints.checkpoint_dirs(ckpts):
            (d / "state.json").write_text("{")
    result, run, notes = resume(reference, tiny_dirs, manifest_path, tmp_path, ruin_all)
    assert_exact(reference, result, run)
    assert sum("is damaged" in n for n in notes) == 3 and notes[-1].startswith("fresh run")


def test_a_kill_before_the_first_checkpoint_leaves_one_row_per_step(reference, tiny_dirs, manifest_path, tmp_path):
    def killed_before_any_checkpoint(ckpts):
        shutil.rmtree(ckpts)  # the metrics of steps 1-3 stay, as a kill before the first save leaves them
    result, run, _ = resume(reference, tiny_dirs, manifest_path, tmp_path, killed_before_any_checkpoint)
    assert_exact(reference, result, run)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
        reference, tiny_dirs, manifest_path, tmp_path, monkeypatch):
    from weightshop.train import trainer

    run = tmp_path / "run"
    shutil.copytree(reference["stopped"], run)
    before = {p.name: (p / "state.safetensors").read_bytes() for p in checkpoints.checkpoint_dirs(run / "checkpoints")}
    monkeypatch.setattr(trainer, "take_step", lambda *a, **k: (float("nan"), None))
    with pytest.raises(WeightshopError, match=r"step 4: the loss is nan .*/step-0000003 and any earlier LoRA are "
                                              "untouched"):
        train(run_config(tiny_dirs, manifest_path, run))
    after = {p.name: (p / "state.safetensors").read_bytes() for p in checkpoints.checkpoint_dirs(run / "checkpoints")}
    assert after == before and not (run / "lora.safetensors").exists()
    assert [s for s, _ in losses(run)] == [1, 2, 3]


def test_a_refused_resume_keeps_the_runs_own_config(reference, tiny_dirs, manifest_path, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference["stopped"], run)
    own = (run / "config.yaml").read_text()
    with pytest.raises(WeightshopError, match="optim.lr"):
        train(run_config(tiny_dirs, manifest_path, run, **{"optim.lr": 0.01}))
    assert (run / "config.yaml").read_text() == own
    assert train(run_config(tiny_dirs, manifest_path, run))["step"] == STEPS  # so its own config still resumes


def test_a_moved_run_folder_resumes(reference, tiny_dirs, manifest_path, tmp_path):
    result, run, notes = resume(reference, tiny_dirs, manifest_path, tmp_path, lambda c: None,
                                **{"output.name": "renamed"})
    assert_exact(reference, result, run)  # copied to a new output.dir, with a new output.name: not a change
    assert result["lora"].endswith("renamed.safetensors")


def test_force_cannot_resume_across_a_change_of_shapes(reference, tiny_dirs, manifest_path, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference["stopped"], run)
    with pytest.raises(WeightshopError, match=r"cannot be resumed even with --force.*\n  lora.rank: 4 -> 8"):
        train(run_config(tiny_dirs, manifest_path, run, **{"lora.rank": 8}), force=True)


def test_a_checkpoint_written_before_checksums_still_resumes(reference, tiny_dirs, manifest_path, tmp_path):
    def legacy(ckpts):
        for d in checkpoints.checkpoint_dirs(ckpts):
            (d / checkpoints.CHECKSUMS).unlink()
    result, run, notes = resume(reference, tiny_dirs, manifest_path, tmp_path, legacy)
    assert_exact(reference, result, run)
    assert "from step 3" in notes[-1]
