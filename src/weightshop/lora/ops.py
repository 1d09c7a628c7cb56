"""LoRA arithmetic: combine, resize, extract, merge. Pure functions on the canonical form, then file wrappers.

- combine: several LoRAs with weights into one by concatenating along the rank (exact: the deltas add).
  DoRA files are refused: their change renormalises each row, so two of them do not add.
- resize: a lower rank by SVD of each module's delta; each module's relative error ||delta - resized||_F /
  ||delta||_F (= sqrt(dropped singular values^2 / all), the measure extract reports) is given per module,
  with its max and mean, next to the kept energy (kept singular values^2 / all); a DoRA keeps its
  magnitude vectors (the direction is resized).
  The SVD of up @ down comes from two thin QRs and an r x r SVD, so it is exact and cheap even for
  full-size modules.
- extract: SVD of (fine-tuned - base) per Linear into a LoRA of a given rank, with each module's relative
  reconstruction error ||diff - up @ down||_F / ||diff||_F.
- merge: base weight + strength * delta (DoRA: rows renormalised, as peft applies it), accumulated in
  float32 and stored in the base's dtype, written as a diffusers directory (the other components' weight
  files hard-linked or copied, their configs and tokenizer files copied) or the official single file.
All outputs are safetensors written atomically; metadata is carried over with a record of the operation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import weightshop
from weightshop.errors import WeightshopError
from weightshop.lora.formats import (
    CanonicalLora,
    LoraModule,
    check_format,
    dora_modules,
    dora_row_scale,
    fit_problems,
    load_canonical,
    save_canonical,
)

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------------
# Pure math


def combine(loras: Sequence[tuple[CanonicalLora, float]]) -> CanonicalLora:
    """One LoRA equal to the weighted sum of several: ranks concatenate, alpha == total rank (scale 1)."""
    if not loras:
        raise WeightshopError("combine needs at least one LoRA")
    parts: dict[str, list[tuple[LoraModule, float]]] = {}
    for canon, weight in loras:
        if dora_modules(canon):
            raise WeightshopError(f"cannot combine {canon.source}: it is a DoRA (magnitude vectors), whose change "
                                  "rescales each weight row and does not add to another LoRA's; merge it into the "
                                  "base instead (`weightshop lora merge`), or combine plain LoRAs only")
        for name, module in canon.modules.items():
            parts.setdefault(name, []).append((module, weight))
    modules = {}
    for name, items in parts.items():
        shapes = {m.shape for m, _ in items}
        if len(shapes) > 1:
            raise WeightshopError(f"cannot combine: module {name} has different shapes {sorted(shapes)} in the LoRAs "
                                  "(they are for different models)")
        dtype = functools.reduce(torch.promote_types, (t.dtype for m, _ in items for t in (m.down, m.up)))
        down = torch.cat([m.down.to(dtype) for m, _ in items], dim=0)
        up = torch.cat([(m.up.float() * (w * m.scale)).to(dtype) for m, w in items], dim=1)
        modules[name] = LoraModule(down, up, float(down.shape[0]))
    return CanonicalLora(modules, dict(loras[0][0].metadata), "diffusers", "<combined>")


def product_svd(module: LoraModule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of the module's delta up @ down * scale, exact, from thin QRs and a small SVD (float64)."""
    qu, ru = torch.linalg.qr(module.up.double())
    qd, rd = torch.linalg.qr(module.down.double().T)
    u, s, vh = torch.linalg.svd((ru @ rd.T) * module.scale)
    return qu @ u, s, vh @ qd.T


def _factor(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int, dtype: torch.dtype) -> LoraModule:
    """Rank-k LoRA from an SVD, singular values split evenly between up and down (alpha == rank)."""
    root = s[:k].sqrt()
    return LoraModule((root[:, None] * vh[:k]).to(dtype).contiguous(), (u[:, :k] * root).to(dtype).contiguous(),
                      float(k))


def kept_rank(s: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """Smallest rank keeping `energy` of sum(s^2), capped at `rank`; at least 1."""
    k = len(s) if rank is None else min(rank, len(s))
    if energy is not None:
        e = (s.double() ** 2).cumsum(0)
        total = float(e[-1]) if len(e) else 0.0
        if total > 0:
            k = min(k, int((e < energy * total * (1 - 1e-12)).sum()) + 1)
    return max(1, k)


def resize(canon: CanonicalLora, rank: int | None = None, energy: float | None = None) -> tuple[CanonicalLora, dict]:
    """Each module reduced to `rank` (or the smallest rank keeping `energy` of it), and a report.

    Per module: `relative_error` = ||delta - resized||_F / ||delta||_F, which is sqrt(sum of the dropped
    singular values^2 / sum of all) by Eckart-Young, and `energy_kept` = sum of the kept singular values^2 /
    sum of all (so relative_error^2 = 1 - energy_kept); overall: `max_relative_error`,
    `mean_relative_error` and `energy_kept` over all modules.
    """
    if rank is None and energy is None:
        raise WeightshopError("resize needs --rank R or --energy E (0 < E <= 1)")
    if rank is not None and rank < 1:
        raise WeightshopError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise WeightshopError(f"energy must be in (0, 1], got {energy}")
    modules, rows = {}, []
    kept_total = all_total = 0.0
    for name, module in canon.modules.items():
        u, s, vh = product_svd(module)
        k = kept_rank(s, rank, energy)
        kept, dropped, total = float((s[:k] ** 2).sum()), float((s[k:] ** 2).sum()), float((s ** 2).sum())
        # A module already within the target keeps its own tensors (bit for bit); the rest are refactored.
        modules[name] = (module if k >= module.rank
                         else dataclasses.replace(_factor(u, s, vh, k, module.up.dtype), magnitude=module.magnitude))
        k = modules[name].rank
        kept_total, all_total = kept_total + kept, all_total + total
        rows.append({"module": name, "rank_before": module.rank, "rank_after": k,
                     "relative_error": (dropped / total) ** 0.5 if total > 0 else 0.0,
                     "energy_kept": kept / total if total > 0 else 1.0})
    errors = [r["relative_error"] for r in rows]
    report = {"modules": rows, "max_relative_error": max(errors, default=0.0),
              "mean_relative_error": sum(errors) / len(errors) if errors else 0.0,
              "energy_kept": kept_total / all_total if all_total > 0 else 1.0,
              "rank": rank, "energy_target": energy}
    return CanonicalLora(modules, dict(canon.metadata), canon.format, canon.source), report


def extract_module(diff: torch.Tensor, rank: int, method: str = "auto") -> tuple[LoraModule, float]:
    """Rank-`rank` LoRA of a weight difference, and its relative reconstruction error."""
    d = diff.float()
    k = min(rank, *d.shape)
    if method == "full" or (method == "auto" and min(d.shape) <= 1024):
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
    else:
        u, s, v = torch.svd_lowrank(d, q=min(k + 10, *d.shape), niter=6)
        vh = v.T
    module = _factor(u, s, vh, k, torch.float32)
    norm = float(torch.linalg.matrix_norm(d))
    error = float(torch.linalg.matrix_norm(d - module.up @ module.down)) / norm if norm > 0 else 0.0
    return module, error


def merge_into(state: dict[str, torch.Tensor], canon: CanonicalLora, strength: float = 1.0,
               base: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Apply each module at `strength` to its `<module>.weight` of a diffusers-named state dict (in place).

    LoRA: add strength * delta. DoRA, as peft applies adapters in turn: everything applied so far (the base
    and earlier LoRAs) plus strength * delta, with each row scaled by m / ||W0 + strength * delta||, the
    norm taken from the unmerged weight W0 (`base`, or `state` when merging one LoRA). So merging LoRAs in
    the order apply_loras loads them gives the weights it computes with. Accumulates in float32 and stores
    in each weight's own dtype. Returns the modules merged.
    """
    done = []
    for name, module in canon.modules.items():
        key = f"{name}.weight"
        if key in state:
            w = state[key]
            if module.is_dora:
                w0, delta = (base or state)[key].float(), strength * module.delta()
                state[key] = (dora_row_scale(module.magnitude, w0 + delta) * (w.float() + delta)).to(w.dtype)
            else:
                state[key] = (w.float() + strength * module.delta()).to(w.dtype)
            done.append(name)
    return done


# ---------------------------------------------------------------------------------------------------
# Files


def _record(metadata: dict, op: dict) -> dict:
    """Metadata carried over, with this operation appended to its weightshop_ops history."""
    history = json.loads(metadata.get("weightshop_ops", "[]"))
    return {**metadata, "weightshop_ops": json.dumps(history + [{"weightshop": weightshop.__version__, **op}])}


def _fmt(to: str | None, canon: CanonicalLora) -> str:
    return check_format(to) if to else canon.format


def resize_file(src: str | Path, dst: str | Path, rank: int | None = None, energy: float | None = None,
                to: str | None = None) -> dict:
    """Resize a LoRA file; written in layout `to` (default: the source's)."""
    from weightshop.io import cached_sha256

    canon = load_canonical(src)
    out, report = resize(canon, rank, energy)
    out.metadata = _record(out.metadata, {"op": "resize", "source_sha256": cached_sha256(src), "rank": rank,
                                          "energy_target": energy, "energy_kept": report["energy_kept"],
                                          "max_relative_error": report["max_relative_error"]})
    path = save_canonical(out, dst, _fmt(to, canon))
    return {"path": str(path), "format": _fmt(to, canon), **report}


def combine_files(loras: Sequence, dst: str | Path, to: str = "diffusers") -> dict:
    """Combine LoRA files (LoraRequest: path and weight) into one file."""
    from weightshop.io import cached_sha256

    canons = [(load_canonical(r.path), r.strength) for r in loras]
    out = combine(canons)
    out.metadata = _record(out.metadata, {"op": "combine", "sources": [
        {"path": str(r.path), "sha256": cached_sha256(r.path), "weight": r.strength} for r in loras]})
    path = save_canonical(out, dst, check_format(to))
    ranks = sorted({m.rank for m in out.modules.values()})
    return {"path": str(path), "format": to, "modules": len(out.modules), "ranks": ranks,
            "sources": [{"path": str(r.path), "weight": r.strength, "modules": len(c.modules)}
                        for r, (c, _) in zip(loras, canons)]}


def extract_file(tuned: str | Path, base: str | Path, dst: str | Path, rank: int, to: str = "diffusers",
                 components: str | Path | None = None, method: str = "auto", progress: Progress | None = None) -> dict:
    """A LoRA of rank `rank` approximating (tuned - base) on every Linear that differs."""
    from weightshop.lora.weights import TransformerWeights

    if rank < 1:
        raise WeightshopError(f"rank must be >= 1, got {rank}")
    if method not in ("auto", "full", "lowrank"):
        raise WeightshopError(f"unknown SVD method {method!r}: expected auto, full or lowrank")
    t, b = TransformerWeights(tuned, components), TransformerWeights(base, components)
    shapes_t, shapes_b = t.linear_shapes(), b.linear_shapes()
    if shapes_t != shapes_b:
        differ = sorted(set(shapes_t) ^ set(shapes_b)) or [n for n in shapes_t if shapes_t[n] != shapes_b[n]]
        raise WeightshopError(f"{tuned} and {base} are not the same architecture (e.g. {differ[0]}): "
                              "extract needs a fine-tune of the base")
    modules, rows, unchanged = {}, [], 0
    names = list(shapes_t)
    for i, name in enumerate(names):
        diff = t.get(f"{name}.weight").float() - b.get(f"{name}.weight").float()
        if progress:
            progress("extract", i + 1, len(names))
        if not diff.any():
            unchanged += 1
            continue
        modules[name], error = extract_module(diff, rank, method)
        rows.append({"module": name, "rank": modules[name].rank, "relative_error": error})
    other = sorted(k for k in t.shapes if k.removesuffix(".weight") not in shapes_t and k in b.shapes
                   and not torch.equal(t.get(k), b.get(k)))
    if not modules:
        raise WeightshopError(f"{tuned} and {base} have identical Linear weights: nothing to extract")
    canon = CanonicalLora(modules, _record({}, {"op": "extract", "tuned": str(tuned), "base": str(base),
                                                "rank": rank}))
    path = save_canonical(canon, dst, check_format(to))
    errors = [r["relative_error"] for r in rows]
    return {"path": str(path), "format": to, "rank": rank, "modules": rows, "unchanged_modules": unchanged,
            "max_relative_error": max(errors), "mean_relative_error": sum(errors) / len(errors),
            "not_representable": other}


LINKED_SUFFIXES = (".safetensors",)  # large weight files, never edited in place: shared with the base


def _link_tree(src: Path, dst: Path, skip: set[str]) -> None:
    """Everything under src into dst, except top-level names in skip: weight files (.safetensors)
    hard-linked (copied across devices), every other file (configs, tokenizer files) copied, so editing
    the new directory's model_index.json or config.json never edits the base's."""
    for item in sorted(src.iterdir()):
        if item.name in skip:
            continue
        target = dst / item.name
        if item.is_dir():
            shutil.copytree(item, target, copy_function=_link_or_copy)  # links followed: real files
        else:
            _link_or_copy(item, target)


def _link_or_copy(src, dst) -> None:
    """Hard-link a weight file (copy when linking fails); copy anything else."""
    if str(src).endswith(LINKED_SUFFIXES):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _write_pipeline_dir(tmp: Path, pipeline_dir: Path, source, weights, merged: Callable) -> None:
    """A diffusers directory at tmp: merged transformer shards, everything else linked from pipeline_dir."""
    from weightshop.io import atomic_save_safetensors, atomic_write_json, read_json
    from weightshop.models.loading import MODEL_DEFAULTS, infer_transformer_config

    (tmp / "transformer").mkdir(parents=True)
    _link_tree(pipeline_dir, tmp, skip={"transformer", MODEL_DEFAULTS, "raw.safetensors", "turbo.safetensors"})
    if source.kind == "diffusers":  # same shards, same names: the index file stays valid
        _link_tree(source.transformer / "transformer", tmp / "transformer", skip={f.name for f in weights.files})
        for file in weights.files:
            atomic_save_safetensors(tmp / "transformer" / file.name, merged(file), {"format": "pt"})
        return
    state = merged(weights.files[0])
    config = read_json(source.components / "transformer" / "config.json") or {
        "_class_name": "Krea2Transformer2DModel",
        **infer_transformer_config({k: tuple(v.shape) for k, v in state.items()})}
    atomic_write_json(tmp / "transformer" / "config.json", config)
    atomic_save_safetensors(tmp / "transformer" / "diffusion_pytorch_model.safetensors", state, {"format": "pt"})


def merge_file(loras: Sequence, model: str | Path, out: str | Path, layout: str = "diffusers",
               components: str | Path | None = None, checkpoint: str | None = None) -> dict:
    """Fuse LoRAs (LoraRequest: path and strength) into a model and save a full checkpoint.

    layout "diffusers": a complete pipeline directory at `out` (transformer/ rewritten; the rest from the
    source, .safetensors weights hard-linked where possible and every other file copied, so the new
    directory's configs can be edited without touching the base's); "single-file": the transformer alone
    in the official key layout at `out` (a .safetensors path), loadable with --components.
    """
    from safetensors.torch import load_file

    from weightshop.io import atomic_save_safetensors, atomic_write_json, cached_sha256, read_json
    from weightshop.lora.weights import TransformerWeights
    from weightshop.models.keys import diffusers_to_original, original_to_diffusers
    from weightshop.models.loading import MODEL_DEFAULTS

    if layout not in ("diffusers", "single-file"):
        raise WeightshopError(f"unknown layout {layout!r}: expected diffusers or single-file")
    if not loras:
        raise WeightshopError("merge needs at least one LoRA")
    out = Path(out)
    if out.exists():
        raise WeightshopError(f"{out} already exists: merge writes a new checkpoint; choose another -o or remove it")
    weights = TransformerWeights(model, components, checkpoint)
    source = weights.source
    shapes = weights.linear_shapes()
    canons = []
    for r in loras:
        canon = load_canonical(r.path)
        problems = fit_problems(canon, shapes)
        if problems:
            raise WeightshopError(f"LoRA file {r.path} does not fit {source.model_id}: " + "; ".join(problems[:3]))
        canons.append((canon, r.strength))
    record = {"base": source.model_id, "checkpoint": source.checkpoint, "loras": [
        {"path": str(r.path), "sha256": cached_sha256(r.path), "strength": r.strength} for r in loras]}

    done: list[set[str]] = [set() for _ in canons]

    def merged(file: Path) -> dict[str, torch.Tensor]:
        state = load_file(str(file))
        state = original_to_diffusers(state) if weights.original else state
        base = dict(state)  # merge_into replaces entries: these stay the unmerged weights DoRA normalises
        for (canon, strength), names in zip(canons, done):
            names.update(merge_into(state, canon, strength, base=base))
        return state

    def check_all_merged() -> None:
        for r, (canon, _), names in zip(loras, canons, done):
            if names != set(canon.modules):
                raise WeightshopError(f"LoRA file {r.path}: {len(set(canon.modules) - names)} modules found no weight "
                                      f"in {source.model_id} (e.g. {sorted(set(canon.modules) - names)[0]})")

    if layout == "single-file":
        if out.suffix != ".safetensors":
            raise WeightshopError(f"single-file output {out} must end in .safetensors")
        state = {}
        for file in weights.files:
            state.update(merged(file))
        check_all_merged()
        atomic_save_safetensors(out, diffusers_to_original(state), {"weightshop_merge": json.dumps(record)})
        return {"path": str(out), "layout": layout, **record}

    pipeline_dir = source.transformer if source.kind == "diffusers" else source.components
    if not (pipeline_dir / "model_index.json").is_file():
        raise WeightshopError(f"{pipeline_dir} has no model_index.json, so no diffusers directory can be assembled "
                              "from it: use --layout single-file, or pass --components a diffusers Krea 2 directory")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_pipeline_dir(tmp, pipeline_dir, source, weights, merged)
        check_all_merged()
        defaults = read_json(pipeline_dir / MODEL_DEFAULTS)
        defaults = {**defaults, "checkpoint": source.checkpoint,
                    "name": f"{defaults.get('name') or source.model_id}+merged", "merged": record}
        atomic_write_json(tmp / MODEL_DEFAULTS, defaults)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(out), "layout": layout, **record}

