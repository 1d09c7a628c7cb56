"""LoRA training on Raw from a cached dataset, with exact resume.

The step itself (objective, batches, micro-batches, optimizer, EMA) is `train.step`; the setup (base storage, LoRA,
compile, optimizer) is `train.setup`. This module is the run around them.

Never lose a run: a checkpoint is a directory written under a temporary name and renamed into place,
then `latest.json` is replaced atomically to point at it; a kill at any moment leaves the previous
checkpoint intact. All randomness of step k derives from (seed, k), so a resumed run repeats an
uninterrupted one exactly. A resume whose config would change the result is refused, listing the changes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

import weightshop
from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_json, atomic_write_text
from weightshop.models.loading import resolve_dtype
from weightshop.train import checkpoints
from weightshop.train.config import TrainConfig, config_dict, differences
from weightshop.train.setup import ADAPTER, Prepared, lora_state, prepare
from weightshop.train.step import Batches, take_step

# Fields that do not change what is learned; a resume may change them freely (a run folder may be moved or copied).
RESUME_FREE = ("output.", "validation.", "schedule.steps", "memory.compile")
# Fields that decide the shapes of the saved tensors: even --force cannot resume across a change of these.
SHAPE_FIELDS = ("lora.rank", "lora.targets", "lora.text_fusion", "lora.dora", "optim.name")


def _checkpoint(run: Path, step: int, prepared: Prepared, info: dict, cfg: TrainConfig) -> Path:
    from weightshop.state import flatten_optimizer, rng_state

    tensors = {f"lora.{k}": v for k, v in lora_state(prepared.model).items()}
    if prepared.ema is not None:
        tensors.update({f"ema.{k}": v for k, v in prepared.ema.items()})
    opt_tensors, opt_meta = flatten_optimizer(prepared.optimizer)
    tensors.update(opt_tensors)
    state = {"info": info, "optimizer": opt_meta, "rng": rng_state(), "config": config_dict(cfg)}
    return checkpoints.save(run / "checkpoints", step, tensors, state, cfg.output.keep_last)


def _refusal(run: Path, found: checkpoints.Found, cfg: TrainConfig, force: bool, dataset: str | None) -> None:
    """Raise when resuming from `found` would change the result (unless forced), or cannot work at all."""
    meta = found.state
    changed = [d for d in differences(meta["config"], config_dict(cfg)) if not d.startswith(RESUME_FREE)]
    trained_on = meta["info"].get("dataset_manifest_sha256")
    if dataset and trained_on and trained_on != dataset:  # the same manifest path with other content
        changed.append(f"dataset: the manifest's content changed (sha256 {trained_on[:12]} -> {dataset[:12]}): "
                       "images, verdicts, captions or buckets differ")
    if (meta["config"].get("optim", {}).get("ema") is None) != (cfg.optim.ema is None):
        changed.append("optim.ema: turned on or off (the checkpoint has no EMA to continue, or one to drop)")
    if not changed:
        return
    fixed = [d for d in changed if d.startswith(SHAPE_FIELDS) or d.startswith("optim.ema: turned")]
    if fixed and force:
        raise WeightshopError(f"{found.path} cannot be resumed even with --force: these settings decide the shapes "
                              "of its saved tensors:\n  " + "\n  ".join(fixed) + "\nuse a new output.dir, or put "
                              "them back as they were")
    if not force:
        raise WeightshopError(f"{run} was trained with another config or dataset; resuming would change the "
                              "result:\n  " + "\n  ".join(changed)
                              + "\nuse a new output.dir, or --force to resume anyway")


def _load(found: checkpoints.Found, prepared: Prepared) -> None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from weightshop.state import set_rng_state, unflatten_optimizer

    tensors = load_file(str(found.path / checkpoints.FILES[0]))
    try:
        set_peft_model_state_dict(prepared.model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")},
                                  adapter_name=ADAPTER)
        unflatten_optimizer(prepared.optimizer, tensors, found.state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise WeightshopError(f"{found.path} does not fit this run's LoRA or optimizer ({str(e).splitlines()[0][:200]}): "
                              "use a new output.dir") from None
    if prepared.ema is not None:
        prepared.ema.update({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    set_rng_state(found.state["rng"])


def _trim_metrics(path: Path, step: int) -> None:
    """One row per step whatever happened: rows after `step` (a killed attempt's, redone now) are dropped."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if line and json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a row cut short by a kill
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _last_loss_ema(metrics: Path, step: int) -> float | None:
    """The loss EMA logged at `step` (a resumed run carries it on; a finished run reports it), else None."""
    if step == 0 or not metrics.is_file():
        return None
    lines = metrics.read_text().splitlines()
    row = json.loads(lines[-1]) if lines else {}
    return row.get("loss_ema") if row.get("step") == step else None


def save_lora(path: Path, weights: dict[str, torch.Tensor], cfg: TrainConfig, names: list[str], info: dict,
              base_hash: str, manifest_hash: str) -> Path:
    """The LoRA through weightshop's one LoRA writer (lora.formats): diffusers/peft layout
    (`transformer.<module>.lora_A.weight`), alpha / rank folded into lora_B so it applies identically in
    diffusers, ComfyUI and weightshop, with the run's provenance in the `weightshop` metadata entry."""
    from weightshop.lora.formats import from_peft_state, save_canonical

    provenance = {
        "version": weightshop.__version__, "base_model": cfg.model.raw, "base_sha256": base_hash,
        "rank": cfg.lora.rank, "alpha": float(cfg.lora.rank), "alpha_folded_from": cfg.lora.alpha,
        "targets": cfg.lora.targets, "modules": len(names), "steps": info["step"],
        "dataset_manifest_sha256": manifest_hash, "trigger": info.get("trigger"),
    }
    canon = from_peft_state(weights, cfg.lora.alpha, {"weightshop": json.dumps(provenance)}, source=str(path))
    return save_canonical(canon, path)


def train(cfg: TrainConfig, *, force: bool = False, stop_after: int | None = None,
          progress: Callable[[str, int, int, dict], None] | None = None,
          notify: Callable[[str], None] | None = None) -> dict:
    """Train (or resume) the run in cfg.output.dir; `stop_after` ends this call early (tests, sittings).

    Calling it again on the same output.dir resumes from the newest checkpoint that verifies. `notify` gets one
    line for each thing a person should know: fresh or resumed (from which step), and any damage found on the way
    (also in the result's "notices").

    Under `accelerate launch` each of N processes computes micro-batches rank, rank + N, ... of every step
    and the gradients are averaged, so N processes with grad_accum k take the same step as one process with
    grad_accum N * k. Only the main process writes checkpoints, metrics, validation and the LoRA.
    """
    from accelerate import Accelerator

    from weightshop.data import read_manifest
    from weightshop.data.cache import build_cache, load_cache
    from weightshop.data.manifest import default_cache_dir, manifest_hash
    from weightshop.models.device import use_cpu_threads
    from weightshop.models.loading import load_transformer, resolve_source, transformer_hash

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    device = accelerator.device
    if device.type == "cpu":
        use_cpu_threads()
    run = Path(cfg.output.dir)
    run.mkdir(parents=True, exist_ok=True)
    notices: list[str] = []

    def say(line: str) -> None:
        if main:
            notices.append(line)
            if notify:
                notify(line)

    manifest = read_manifest(cfg.data.manifest)
    dataset = manifest_hash(manifest)
    # Which checkpoint to continue from, decided (and refused if it must be) before anything heavy loads. Only the
    # main process moves damaged checkpoints aside; the others look after it has.
    found = checkpoints.newest_valid(run / "checkpoints", move_damaged=main)
    if world > 1:
        accelerator.wait_for_everyone()
        found = found if main else checkpoints.newest_valid(run / "checkpoints", move_damaged=False)
    for note in found.notes:
        say(note)
    if found.path is not None:
        _refusal(run, found, cfg, force, dataset)
    cache_dir = Path(cfg.data.cache) if cfg.data.cache else default_cache_dir(cfg.data.manifest)
    try:
        cached = load_cache(cache_dir, manifest)
    except WeightshopError:
        if main:
            build_cache(manifest, cfg.model.raw, cache_dir,
                        progress=(lambda label, d, t: progress(f"cache {label}", d, t, {})) if progress else None)
        accelerator.wait_for_everyone()
        cached = load_cache(cache_dir, manifest)

    # Only the transformer: with a complete cache the VAE and text encoder are never loaded.
    source = resolve_source(cfg.model.raw, cfg.model.components, "raw")
    torch.manual_seed(cfg.schedule.seed)
    transformer = load_transformer(source, resolve_dtype(cfg.model.dtype))
    prepared = prepare(transformer, cfg, device)  # the base reaches the device block by block: no bf16 peak
    info = {"step": 0}
    if found.path is not None:
        _load(found, prepared)
        info = found.state["info"]
        say(f"resuming {run} from step {info['step']} of {cfg.schedule.steps} (checkpoint {found.path.name})")
    else:
        say(f"fresh run in {run}: {cfg.schedule.steps} steps (run the same command again to resume)")
    info["dataset_manifest_sha256"] = dataset
    if main:  # after the resume check: a refused resume leaves the run's own config as it was
        atomic_write_text(run / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
        _trim_metrics(run / "metrics.jsonl", info["step"])
        checkpoints.prune(run / "checkpoints", cfg.output.keep_last)  # what a kill between save and prune left
    model = accelerator.prepare_model(transformer) if world > 1 else transformer  # what the step calls
    batches = Batches(cached, cfg.schedule.batch_size, cfg.schedule.seed)
    metrics_path = run / "metrics.jsonl"
    writer = _tensorboard(run, info["step"]) if cfg.output.tensorboard and main else None
    target = cfg.schedule.steps if stop_after is None else min(cfg.schedule.steps, stop_after)
    transformer.train()
    validator, validations = (_validator(cfg) if main else None), []
    smooth, start = _last_loss_ema(metrics_path, info["step"]), time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while info["step"] < target:
        step = info["step"]
        total, _ = take_step(prepared, cached, batches, cfg, step, device, model=model,
                             accelerator=accelerator if world > 1 else None)
        if not math.isfinite(total):  # nothing of this step is written: the last checkpoint and the LoRA stay good
            latest = checkpoints.checkpoint_dirs(run / "checkpoints")
            raise WeightshopError(
                f"step {step + 1}: the loss is {total} (training diverged, or the data holds NaN/inf); nothing was "
                f"saved for it, so {latest[0] if latest else 'no checkpoint'} and any earlier LoRA are untouched: "
                "lower optim.lr or check the cached data, then run again to resume from the last checkpoint")
        info["step"] = step + 1
        smooth = total if smooth is None else 0.95 * smooth + 0.05 * total
        if main:
            row = {"step": info["step"], "loss": total, "loss_ema": smooth, "lr": prepared.optimizer.param_groups[0]["lr"],
                   "time": time.time()}
            if device.type == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if writer is not None:
                for key in ("loss", "loss_ema", "lr"):
                    writer.add_scalar(f"train/{key}", row[key], info["step"])
            if progress:
                progress("train", info["step"], cfg.schedule.steps, {"loss": smooth})
            if info["step"] % cfg.output.save_every == 0 or info["step"] == target:
                _checkpoint(run, info["step"], prepared, info, cfg)
        v = cfg.validation
        if main and v.prompts and v.every and info["step"] % v.every == 0 and info["step"] < cfg.schedule.steps:
            validations.append(_validate(validator, run, info["step"], prepared, cfg))
        if world > 1:
            accelerator.wait_for_everyone()
    if writer is not None:
        writer.close()
    result = {"run": str(run), "step": info["step"], "steps": cfg.schedule.steps, "modules": len(prepared.names),
              "notices": notices,
              "seconds": time.perf_counter() - start, "loss_ema": smooth, "processes": world, "main": main,
              "base": prepared.base}
    if info["step"] < cfg.schedule.steps or not main:
        return result
    info["trigger"] = manifest.get("trigger")
    lora_path = save_lora(run / f"{cfg.output.name}.safetensors", prepared.weights(), cfg, prepared.names, info,
                          transformer_hash(source), dataset)
    result["lora"] = str(lora_path)
    result["verified_on"] = verify_lora(lora_path, cfg)
    if validator is not None:
        validations.append({"step": info["step"], **validator.run(lora_path, run / "validation" / "final")})
    result["validation"] = validations
    atomic_write_json(run / "validation.json", validations)
    return result


def _tensorboard(run: Path, step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise WeightshopError("output.tensorboard needs the tensorboard package: pip install tensorboard") from None
    # purge_step drops events logged after the checkpoint a resume starts from, as metrics.jsonl is trimmed.
    return SummaryWriter(str(run / "tensorboard"), purge_step=step + 1)


def _validator(cfg: TrainConfig):
    if not cfg.validation.prompts:
        return None
    from weightshop.models.loading import resolve_source
    from weightshop.train.validate import Validator

    probe_dir = None
    if cfg.validation.concept:
        from weightshop.models.builtin import packaged_probe

        # The probe belongs to the nano family the run trains on (the committed one, or one packaged elsewhere).
        probe_dir = packaged_probe(resolve_source(cfg.model.raw).transformer.parent)
    return Validator(cfg, probe_dir)


def _validate(validator, run: Path, step: int, prepared: Prepared, cfg: TrainConfig) -> dict:
    """Save the current LoRA as a file and render with it, as a user would."""
    path = save_lora(run / "validation" / f"step-{step:07d}" / "lora.safetensors", prepared.weights(), cfg,
                     prepared.names, {"step": step}, "", "")
    return {"step": step, **validator.run(path, path.parent)}


def verify_lora(path: Path, cfg: TrainConfig) -> dict:
    """Load the saved file into a fresh Turbo (or Raw) pipeline the way a user will; every module must land."""
    from weightshop.lora import LoraRequest, apply_loras
    from weightshop.models.loading import load_model

    target = cfg.model.turbo or cfg.model.raw
    model = load_model(target, components=cfg.model.components, dtype="fp32")
    applied = apply_loras(model.pipeline, [LoraRequest(path, 1.0)])
    return {"model": target, "checkpoint": model.checkpoint.name, "modules_injected": applied[0].modules}
