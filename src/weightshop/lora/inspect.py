"""What a LoRA file is: layout, the model it fits, ranks and alphas, where its weight goes, and what is off.

Everything comes from the file and from model configs or safetensors headers: the full-size Krea 2 is
checked on the meta device from diffusers' Krea2Transformer2DModel defaults, without any weights.
A module's strength is ||up @ down||_F * alpha / rank (the Frobenius norm of the weight change it applies
at strength 1), computed from the two rank x rank Gram matrices, so inspecting a 96 M parameter LoRA
never forms a full-size matrix.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import torch

from weightshop.lora.formats import (
    CanonicalLora,
    LoraModule,
    dora_modules,
    fit_problems,
    linear_shapes,
    module_templates,
    to_canonical,
)

_BLOCK = re.compile(r"^(?P<block>.*?blocks\.(?P<index>\d+))\.")
_INNER = re.compile(r"^(text_fusion\.)?(transformer_blocks|layerwise_blocks|refiner_blocks)\.\d+\.")


def delta_norm(module: LoraModule) -> float:
    """||up @ down||_F * |alpha / rank| without forming up @ down: sqrt(sum((up^T up) * (down down^T)))."""
    up, down = module.up.double(), module.down.double()
    return float(((up.T @ up) * (down @ down.T)).sum().clamp_min(0).sqrt()) * abs(module.scale)


def block_of(name: str) -> str:
    """The block a module belongs to (`transformer_blocks.3`), or the module itself outside blocks."""
    m = _BLOCK.match(name)
    return m.group("block") if m else name


def target_suffix(name: str) -> str:
    """The module name without its block (`transformer_blocks.3.attn.to_q` -> `attn.to_q`)."""
    return _INNER.sub("", name)


def _block_order(block: str) -> tuple[int, int]:
    """Where a block sits in the model: its family's first Linear, then its index."""
    templates = module_templates()
    m = re.fullmatch(r"(?P<family>.*blocks)\.(?P<index>\d+)", block)
    if m:
        family = m.group("family") + ".{}."
        first = min((i for i, t in enumerate(templates) if t.startswith(family)), default=len(templates))
        return first, int(m.group("index"))
    return (templates.index(block) if block in templates else len(templates)), 0


def _order(name: str) -> tuple[int, int, int]:
    """Model order of a module: its block, then its place in the block."""
    templates = module_templates()
    template = re.sub(r"(blocks)\.\d+\.", r"\1.{}.", name)
    return (*_block_order(block_of(name)), templates.index(template) if template in templates else len(templates))


def block_norms(canon: CanonicalLora) -> list[dict]:
    """Per block, in model order: modules, and the norm of all its weight changes (sqrt of summed squares)."""
    sums: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    for name, module in canon.modules.items():
        sums[block_of(name)] += delta_norm(module) ** 2
        counts[block_of(name)] += 1
    return [{"block": b, "modules": counts[b], "norm": sums[b] ** 0.5} for b in sorted(sums, key=_block_order)]


# ---------------------------------------------------------------------------------------------------
# Which model it fits


def config_linear_shapes(name: str) -> dict[str, tuple[int, int]]:
    """Linear shapes of a known model, built on the meta device (no weights): krea2, krea2-tiny, krea2-nano."""
    from diffusers import Krea2Transformer2DModel

    with torch.device("meta"):
        if name == "krea2":
            model = Krea2Transformer2DModel()
        elif name == "krea2-tiny":
            from weightshop.models.tiny import tiny_transformer

            model = tiny_transformer()
        else:
            from weightshop.models.builtin import model_dir

            config = Krea2Transformer2DModel.load_config(model_dir(name), subfolder="transformer")
            model = Krea2Transformer2DModel.from_config(config)
    return linear_shapes(model)


def known_models() -> list[str]:
    from weightshop.models.builtin import installed

    return ["krea2", *(["krea2-nano"] if installed() else []), "krea2-tiny"]


def candidate_shapes(model: str | Path | None = None, components: str | Path | None = None) -> dict[str, dict]:
    """name -> Linear shapes of the models to check a LoRA against (the one given, or the known ones).

    `krea2` (full size) and `krea2-tiny` are built from their configs on the meta device; any other
    model is read from its safetensors headers.
    """
    if model in ("krea2", "krea2-tiny"):
        return {model: config_linear_shapes(model)}
    if model is not None:
        from weightshop.lora.weights import model_linear_shapes

        return {str(model): model_linear_shapes(model, components)}
    return {name: config_linear_shapes(name) for name in known_models()}


# ---------------------------------------------------------------------------------------------------
# The report


_DIFFUSERS_PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.")
AITOOLKIT_PREFIX = "base_model.model."  # diffusers converts it; ComfyUI's key rules match none of its keys


def diffusers_loads(keys: list[str], canon: CanonicalLora) -> bool:
    """Whether diffusers' own Krea 2 load_lora_weights applies this file as is, every module at its alpha."""
    return (all(k.startswith(_DIFFUSERS_PREFIXES) and ".lora_down." not in k and ".lora_up." not in k for k in keys)
            and not canon.alpha_sources.get("alpha keys"))


def _warnings(canon: CanonicalLora, keys: list[str], fits: list[dict]) -> list[str]:
    out = []
    fmt, sources = canon.format, canon.alpha_sources
    if canon.unmatched:
        out.append(f"{len(canon.unmatched)} keys name no Krea 2 Linear layer and would be refused: "
                   + ", ".join(sorted(canon.unmatched)[:3]))
    if canon.nonfinite:
        out.append(f"{len(canon.nonfinite)} tensors hold NaN or inf (the file cannot be applied): "
                   + ", ".join(canon.nonfinite[:3]))
    if sources.get("absent"):
        where = "metadata (lora_adapter_metadata)" if fmt == "diffusers" else ".alpha keys"
        out.append(f"no alpha for {sources['absent']} modules in {where}: every loader uses alpha = rank; if the "
                   "trainer used another alpha, the strength is off by alpha / rank")
    off = [n for n, m in canon.modules.items() if m.alpha != m.rank]
    if sources.get("metadata") and off:
        out.append(f"alpha != rank for {len(off)} modules and it lives only in metadata: diffusers and weightshop "
                   "read it, ComfyUI ignores metadata and applies this file at rank / alpha times the strength; "
                   "`weightshop lora convert --to comfyui` folds alpha into lora_B")
    if not diffusers_loads(keys, canon):
        out.append("diffusers' load_lora_weights cannot apply this file as is (diffusers 0.42.1 loads kohya lora_unet_ / "
                   "lora_transformer_ keys, model.diffusion_model. and bare names as a silent no-op: 0 modules and a "
                   "warning; it raises on .alpha or lora_down/lora_up keys under diffusion_model. / base_model.model.): "
                   "weightshop converts it; for diffusers itself use `weightshop lora convert --to diffusers`")
    if any(k.startswith(AITOOLKIT_PREFIX) for k in keys):
        src = Path(canon.source)
        dst = src.with_name(src.stem + "-comfyui.safetensors")
        out.append(f"ComfyUI loads nothing from this file: its keys carry ai-toolkit's {AITOOLKIT_PREFIX} prefix, "
                   "which none of ComfyUI's LoRA key rules match (ComfyUI logs each key as not loaded and renders the "
                   f"base model); `weightshop lora convert {src} --to comfyui -o {dst}` writes it with ComfyUI's "
                   "diffusion_model. names")
    if dora_modules(canon):
        out.append("DoRA: at strength 1 diffusers, ComfyUI and weightshop apply the same weights; at other strengths "
                   "diffusers/weightshop scale the change inside DoRA's row norm while ComfyUI interpolates between the "
                   "base and the strength-1 weights, so a strength sweep differs between them")
    if fits and not any(f["fits"] for f in fits):  # reported only with require_fit=False (--allow-no-fit)
        out.append("fits none of the models checked (" + ", ".join(f["model"] for f in fits) + ")")
    return out


def no_fit_error(path: str | Path, fits: list[dict], modules: int) -> WeightshopError:
    """The error for a LoRA that fits none of the models it was compared against (one line)."""
    from weightshop.errors import WeightshopError

    closest = min(fits, key=lambda f: f["problems"])
    against = ", ".join(f"{f['model']} ({f['problems']} of {modules} modules do not fit)" for f in fits)
    return WeightshopError(
        f"LoRA file {path} fits none of the models it was compared against: {against}; e.g. against "
        f"{closest['model']}: {closest['first_problem']}. Check it against the model it was made for with --model "
        "(a diffusers directory, a .safetensors file or a built-in name), or pass --allow-no-fit to report it anyway")


def inspect_lora(path: str | Path, model: str | Path | None = None, components: str | Path | None = None,
                 require_fit: bool = True) -> dict:
    """A JSON-ready description of a LoRA file (see the module docstring).

    A file that fits none of the models checked (`model`, or the known Krea 2 sizes) is an error, so a
    script can vet files by the exit status; require_fit=False reports it with a warning instead.
    """
    from weightshop.io import cached_sha256
    from weightshop.lora.files import read_lora_file

    path = Path(path)
    tensors, metadata = read_lora_file(path)
    canon = to_canonical(tensors, metadata, source=path, strict=False)
    modules = []
    for name in sorted(canon.modules, key=_order):
        m = canon.modules[name]
        modules.append({"module": name, "rank": m.rank, "alpha": m.alpha, "scale": m.scale, "out": m.shape[0],
                        "in": m.shape[1], "dtype": str(m.up.dtype).removeprefix("torch."), "norm": delta_norm(m)})
    fits = []
    for name, shapes in candidate_shapes(model, components).items():
        problems = fit_problems(canon, shapes)
        fits.append({"model": name, "fits": not problems, "problems": len(problems), "first_problem":
                     problems[0] if problems else None})
    if require_fit and not any(f["fits"] for f in fits):
        raise no_fit_error(path, fits, len(canon.modules))
    ranks = collections.Counter(m["rank"] for m in modules)
    alphas = collections.Counter(m["alpha"] for m in modules)
    return {
        "path": str(path),
        "sha256": cached_sha256(path),
        "format": canon.format,
        "tensors": len(tensors),
        "modules": len(modules),
        "parameters": sum(m.down.numel() + m.up.numel() + (m.magnitude.numel() if m.is_dora else 0)
                          for m in canon.modules.values()),
        "dora": bool(dora_modules(canon)),
        "ranks": {str(k): v for k, v in sorted(ranks.items())},
        "alphas": {f"{k:g}": v for k, v in sorted(alphas.items())},
        "alpha_sources": canon.alpha_sources,
        "diffusers_loads_as_is": diffusers_loads(list(tensors), canon),
        "targets": sorted({target_suffix(m["module"]) for m in modules}),
        "fits": fits,
        "base_model": next((f["model"] for f in fits if f["fits"]), None),
        "blocks": block_norms(canon),
        "module_table": modules,
        "metadata": {k: (v if len(v) <= 400 else v[:400] + "...") for k, v in metadata.items()},
        "warnings": _warnings(canon, list(tensors), fits),
    }


def plot_block_norms(blocks: list[dict], path: str | Path, title: str = "") -> Path:
    """A horizontal bar chart of per-block norms as a PNG (PIL only)."""
    import io

    from PIL import Image, ImageDraw

    from weightshop.io import atomic_write_bytes

    row, label_w, bar_w, pad = 14, 8 + 6 * max((len(b["block"]) for b in blocks), default=4), 320, 6
    top = 20 if title else pad
    img = Image.new("RGB", (label_w + bar_w + 80, top + row * len(blocks) + pad), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((pad, 4), title[:120], fill="black")
    peak = max((b["norm"] for b in blocks), default=0.0) or 1.0
    for i, b in enumerate(blocks):
        y = top + i * row
        draw.text((pad, y + 1), b["block"], fill="black")
        width = int(round(bar_w * b["norm"] / peak))
        draw.rectangle([label_w, y + 2, label_w + max(width, 1), y + row - 3], fill=(70, 110, 180))
        draw.text((label_w + width + 4, y + 1), f"{b['norm']:.3g}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
