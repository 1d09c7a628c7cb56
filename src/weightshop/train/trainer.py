"""LoRA training on Raw from a cached dataset, with exact resume.

The step, in Krea 2's terms: x_t = (1 - s) x0 + s noise, target v = noise - x0, timestep s. The default
timestep sampler is "shifted": uniform pushed through the same time shift inference uses at this
resolution (mu from weightshop.models.schedule), so training spends its steps where sampling does.

Never lose a run: a checkpoint is a directory written under a temporary name and renamed into place,
then `latest.json` is replaced atomically to point at it; a kill at any moment leaves the previous
checkpoint intact. All randomness of step k derives from (seed, k), so a resumed run repeats an
uninterrupted one exactly. A resume whose config would change the result is refused, listing the changes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml

import weightshop
from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_json, atomic_write_text
from weightshop.models.latents import pack_latents, position_ids
from weightshop.models.loading import resolve_dtype
from weightshop.models.schedule import KREA2_SHIFT, loss_weights, noisy_sample, sample_timesteps, velocity_target
from weightshop.train.config import TrainConfig, config_dict, differences
from weightshop.train.targets import resolve_targets

ADAPTER = "weightshop"
# Fields that do not change what is learned; a resume may change them freely.
RESUME_FREE = ("output.save_every", "output.keep_last", "output.tensorboard", "validation.", "schedule.steps",
               "memory.compile")


def _lr_scale(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    scale = min(1.0, (step + 1) / o.warmup) if o.warmup else 1.0
    if o.scheduler == "cosine":
        scale *= 0.5 * (1 + math.cos(math.pi * min(step, cfg.schedule.steps) / cfg.schedule.steps))
    return scale


def _optimizer(params, cfg: TrainConfig):
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    if o.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise WeightshopError("optim.name adamw8bit needs bitsandbytes (CUDA only): pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise WeightshopError("optim.name prodigy needs prodigyopt: pip install prodigyopt") from None
    return Prodigy(params, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)


class Batches:
    """Deterministic batches from one aspect bucket at a time: batch k depends on (seed, k) only."""

    def __init__(self, cached, batch_size: int, seed: int):
        self.cached, self.batch_size, self.seed = cached, batch_size, seed
        by_bucket: dict[tuple, list[str]] = {}
        for file in sorted(cached.latents):
            by_bucket.setdefault(cached.buckets[file], []).append(file)
        self.buckets = sorted(by_bucket.items())
        self.weights = np.array([len(files) for _, files in self.buckets], dtype=float)
        self.weights /= self.weights.sum()

    def files(self, step: int, micro: int) -> list[str]:
        rng = np.random.default_rng([self.seed, step, micro, 1])
        _, files = self.buckets[int(rng.choice(len(self.buckets), p=self.weights))]
        return [files[i] for i in rng.choice(len(files), size=self.batch_size, replace=len(files) < self.batch_size)]


def flow_matching_loss(transformer, cached, files: list[str], cfg: TrainConfig, step: int, micro: int,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Krea 2's objective on one batch from the cache, caption dropout applied from the cached empty caption.

    All randomness comes from (seed, step, micro) and is drawn on the CPU, so a batch is the same on any
    device and in any process; tensors move to `device` afterwards.
    """
    rng = np.random.default_rng([cfg.schedule.seed, step, micro, 2])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    x0 = torch.stack([cached.latents[f].float() for f in files])
    dropped = rng.random(len(files)) < cfg.data.caption_dropout
    pairs = [cached.empty if d else cached.embeds[f] for f, d in zip(files, dropped)]
    embeds = torch.stack([e.float() for e, _ in pairs])
    mask = torch.stack([m for _, m in pairs])
    b, c, h, w = x0.shape
    tokens = (h // 2) * (w // 2)
    s = sample_timesteps(b, cfg.schedule.timesteps, generator=gen, mean=cfg.schedule.logit_mean,
                         std=cfg.schedule.logit_std, mu=KREA2_SHIFT.mu(tokens))
    noise = torch.randn(x0.shape, generator=gen)
    packed, packed_noise = pack_latents(x0), pack_latents(noise)
    xt = noisy_sample(packed, packed_noise, s.view(-1, 1, 1))
    ids = position_ids(embeds.shape[1], h // 2, w // 2).to(device)
    dtype = resolve_dtype(cfg.model.dtype)
    target = velocity_target(packed, packed_noise).float().to(device)
    xt, embeds, s, mask = xt.to(device, dtype), embeds.to(device, dtype), s.to(device, dtype), mask.to(device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.memory.autocast == "bf16"):
        v = transformer(xt, embeds, s, ids, mask, return_dict=False)[0]
    per_sample = (v.float() - target).pow(2).flatten(1).mean(1)
    weights = loss_weights(s.float(), cfg.schedule.loss_weighting, gamma=cfg.schedule.min_snr_gamma)
    return (weights * per_sample).mean()


def lora_state(transformer) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(transformer, adapter_name=ADAPTER).items()}


def _checkpoint(run: Path, step: int, transformer, ema: dict | None, optimizer, info: dict, cfg: TrainConfig) -> Path:
    from safetensors.torch import save_file

    from weightshop.state import flatten_optimizer, rng_state

    ckpts = run / "checkpoints"
    final = ckpts / f"step-{step:07d}"
    tmp = ckpts / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"lora.{k}": v for k, v in lora_state(transformer).items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.items()})
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    atomic_write_json(tmp / "state.json", {"info": info, "optimizer": opt_meta, "rng": rng_state(),
                                           "config": config_dict(cfg)})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write_json(run / "checkpoints" / "latest.json", {"step": step, "dir": final.name})
    kept = sorted(p for p in ckpts.glob("step-*") if p.is_dir())
    for old in kept[:-cfg.output.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _resume(run: Path, transformer, ema: dict | None, optimizer, cfg: TrainConfig, force: bool,
            trim_metrics: bool = True, dataset: str | None = None) -> dict | None:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from weightshop.state import set_rng_state, unflatten_optimizer

    pointer = run / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    ckpt = run / "checkpoints" / json.loads(pointer.read_text())["dir"]
    meta = json.loads((ckpt / "state.json").read_text())
    changed = [d for d in differences(meta["config"], config_dict(cfg)) if not d.startswith(RESUME_FREE)]
    trained_on = meta["info"].get("dataset_manifest_sha256")
    if dataset and trained_on and trained_on != dataset:  # the same manifest path with other content
        changed.append(f"dataset: the manifest's content changed (sha256 {trained_on[:12]} -> {dataset[:12]}): "
                       "images, verdicts, captions or buckets differ")
    if changed and not force:
        raise WeightshopError(f"{run} was trained with another config or dataset; resuming would change the "
                              "result:\n  "
                              + "\n  ".join(changed) + "\nuse a new output.dir, or --force to resume anyway")
    tensors = load_file(str(ckpt / "state.safetensors"))
    set_peft_model_state_dict(transformer, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")},
                              adapter_name=ADAPTER)
    if ema is not None:
        ema.update({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    unflatten_optimizer(optimizer, tensors, meta["optimizer"])
    set_rng_state(meta["rng"])
    # Steps logged after this checkpoint (a kill between saves) are redone: drop their lines.
    metrics = run / "metrics.jsonl"
    if trim_metrics and metrics.is_file():
        kept = [l for l in metrics.read_text().splitlines() if l and json.loads(l)["step"] <= meta["info"]["step"]]
        atomic_write_text(metrics, "".join(l + "\n" for l in kept))
    return meta["info"]


def _last_loss_ema(metrics: Path, step: int) -> float | None:
    """The loss EMA logged at `step` (a resumed run carries it on; a finished run reports it), else None."""
    if step == 0 or not metrics.is_file():
        return None
    lines = metrics.read_text().splitlines()
    row = json.loads(lines[-1]) if lines else {}
    return row.get("loss_ema") if row.get("step") == step else None


def save_lora(path: Path, weights: dict[str, torch.Tensor], cfg: TrainConfig, names: list[str], info: dict,
              base_hash: str, manifest_hash: str) -> Path:
    """The LoRA in the diffusers/peft layout (`transformer.<module>.lora_A.weight`), alpha == rank.

    ComfyUI ignores alpha in metadata; a LoRA saved with alpha == rank (scale 1) applies identically in
    diffusers, ComfyUI and weightshop. A config with alpha != rank has alpha / rank folded into lora_B.
    """
    from safetensors.torch import save_file

    scale = cfg.lora.alpha / cfg.lora.rank
    tensors = {}
    for key, value in weights.items():
        value = value * scale if ".lora_B." in key and scale != 1 else value
        tensors[f"transformer.{key.removeprefix('base_model.model.')}"] = value.detach().cpu().contiguous()
    adapter = {"r": cfg.lora.rank, "lora_alpha": float(cfg.lora.rank), "target_modules": names,
               "lora_dropout": cfg.lora.dropout, "use_dora": cfg.lora.dora}
    metadata = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in adapter.items()}),
        "weightshop": json.dumps({
            "version": weightshop.__version__, "base_model": cfg.model.raw, "base_sha256": base_hash,
            "rank": cfg.lora.rank, "alpha": float(cfg.lora.rank), "alpha_folded_from": cfg.lora.alpha,
            "targets": cfg.lora.targets, "modules": len(names), "steps": info["step"],
            "dataset_manifest_sha256": manifest_hash, "trigger": info.get("trigger"),
        }),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def add_lora(transformer, cfg: TrainConfig, device) -> tuple[list[str], list[torch.nn.Parameter]]:
    """The run's peft LoRA on its resolved targets, trainable in fp32 on `device`; checkpointing if asked.
    Used by the trainer, `weightshop plan`'s measurements and the benchmarks, so all three run one setup."""
    from peft import LoraConfig

    names = resolve_targets(transformer, cfg.lora.targets, cfg.lora.text_fusion)
    transformer.add_adapter(LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                       target_modules=names, use_dora=cfg.lora.dora, init_lora_weights=True),
                            adapter_name=ADAPTER)
    transformer.to(device)
    if cfg.memory.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return names, params


def train(cfg: TrainConfig, *, force: bool = False, stop_after: int | None = None,
          progress: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Train (or resume) the run in cfg.output.dir; `stop_after` ends this call early (tests, sittings).

    Under `accelerate launch` each of N processes computes micro-batches rank, rank + N, ... of every step
    and the gradients are averaged, so N processes with grad_accum k take the same step as one process with
    grad_accum N * k. Only the main process writes checkpoints, metrics, validation and the LoRA.
    """
    from accelerate import Accelerator

    from weightshop.data import read_manifest
    from weightshop.data.cache import build_cache, load_cache
    from weightshop.data.manifest import manifest_hash
    from weightshop.models.loading import load_transformer, resolve_source, transformer_hash
    from weightshop.train.memory import compile_blocks, store_base

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    device = accelerator.device
    run = Path(cfg.output.dir)
    run.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cfg.data.manifest)
    cache_dir = Path(cfg.data.cache) if cfg.data.cache else Path(cfg.data.manifest).parent / "cache"
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
    transformer.requires_grad_(False)
    compute = torch.bfloat16 if cfg.memory.autocast == "bf16" else resolve_dtype(cfg.model.dtype)
    base = store_base(transformer, cfg.memory.base_dtype, compute, device=device)  # block by block: no bf16 peak
    names, params = add_lora(transformer, cfg, device)
    if cfg.memory.compile:
        compile_blocks(transformer)
    optimizer = _optimizer(params, cfg)
    ema = {k: v.clone() for k, v in lora_state(transformer).items()} if cfg.optim.ema else None
    if main:
        atomic_write_text(run / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
    dataset = manifest_hash(manifest)
    info = _resume(run, transformer, ema, optimizer, cfg, force, trim_metrics=main, dataset=dataset) or {"step": 0}
    info["dataset_manifest_sha256"] = dataset
    model = accelerator.prepare_model(transformer) if world > 1 else transformer
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
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * _lr_scale(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(cfg.schedule.grad_accum):
            index = micro * world + rank
            sync = accelerator.no_sync(model) if world > 1 and micro < cfg.schedule.grad_accum - 1 else nullcontext()
            with sync:
                loss = flow_matching_loss(model, cached, batches.files(step, index), cfg, step, index, device)
                (loss / cfg.schedule.grad_accum).backward()
            total += loss.item() / cfg.schedule.grad_accum
        if world > 1:
            total = accelerator.reduce(torch.tensor(total, device=device), "mean").item()
        if cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for k, v in lora_state(transformer).items():
                    ema[k].lerp_(v, 1 - cfg.optim.ema)
        info["step"] = step + 1
        smooth = total if smooth is None else 0.95 * smooth + 0.05 * total
        if main:
            row = {"step": info["step"], "loss": total, "loss_ema": smooth, "lr": optimizer.param_groups[0]["lr"],
                   "time": time.time()}
            if device.type == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if writer is not None:
                for key in ("loss", "loss_ema", "lr"):
                    writer.add_scalar(f"train/{key}", row[key], info["step"])
            if progress:
                progress("train", info["step"], target, {"loss": smooth})
            if info["step"] % cfg.output.save_every == 0 or info["step"] == target:
                _checkpoint(run, info["step"], transformer, ema, optimizer, info, cfg)
        v = cfg.validation
        if main and v.prompts and v.every and info["step"] % v.every == 0 and info["step"] < cfg.schedule.steps:
            validations.append(_validate(validator, run, info["step"], transformer, ema, cfg, names, source))
        if world > 1:
            accelerator.wait_for_everyone()
    if writer is not None:
        writer.close()
    result = {"run": str(run), "step": info["step"], "steps": cfg.schedule.steps, "modules": len(names),
              "seconds": time.perf_counter() - start, "loss_ema": smooth, "processes": world, "main": main,
              "base": base}
    if info["step"] < cfg.schedule.steps or not main:
        return result
    weights = ema if ema is not None else lora_state(transformer)
    info["trigger"] = manifest.get("trigger")
    lora_path = save_lora(run / f"{cfg.output.name}.safetensors", weights, cfg, names, info,
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
    return SummaryWriter(str(run / "tensorboard"), purge_step=step + 1 if step else None)


def _validator(cfg: TrainConfig):
    if not cfg.validation.prompts:
        return None
    from weightshop.models.loading import resolve_source
    from weightshop.train.validate import Validator

    probe_dir = None
    if cfg.validation.concept:
        from weightshop.nano import family

        # The probe belongs to the nano family the run trains on (the committed one, or one packaged elsewhere).
        root = resolve_source(cfg.model.raw).transformer.parent
        probe_dir = family.paths(root)[2] if family.installed(root) else None
    return Validator(cfg, probe_dir)


def _validate(validator, run: Path, step: int, transformer, ema, cfg: TrainConfig, names, source) -> dict:
    """Save the current LoRA as a file and render with it, as a user would."""
    weights = ema if ema is not None else lora_state(transformer)
    path = save_lora(run / "validation" / f"step-{step:07d}" / "lora.safetensors", weights, cfg, names,
                     {"step": step}, "", "")
    return {"step": step, **validator.run(path, path.parent)}


def verify_lora(path: Path, cfg: TrainConfig) -> dict:
    """Load the saved file into a fresh Turbo (or Raw) pipeline the way a user will; every module must land."""
    from weightshop.lora import LoraRequest, apply_loras
    from weightshop.models.loading import load_model

    target = cfg.model.turbo or cfg.model.raw
    model = load_model(target, components=cfg.model.components, dtype="fp32")
    applied = apply_loras(model.pipeline, [LoraRequest(path, 1.0)])
    return {"model": target, "checkpoint": model.checkpoint.name, "modules_injected": applied[0].modules}
