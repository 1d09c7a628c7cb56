"""One key map for the LoRA layouts Krea 2 LoRAs ship in, and the canonical form they all convert through.

| format      | keys (per adapted Linear)                                    | alpha read from                  |
|-------------|--------------------------------------------------------------|----------------------------------|
| `diffusers` | `transformer.transformer_blocks.0.attn.to_q.lora_A/B.weight` | metadata `lora_adapter_metadata` |
| `comfyui`   | `diffusion_model.blocks.0.attn.wq.lora_A/B.weight`           | `.alpha` keys (ComfyUI)          |
| `aitoolkit` | `base_model.model.blocks.0.attn.wq.lora_A/B.weight`          | `.alpha` keys                    |
| `kohya`     | `lora_unet_blocks_0_attn_wq.lora_down/lora_up.weight`        | `.alpha` keys                    |
Per module: an `.alpha` key wins, then metadata, and with neither alpha = rank (what every loader assumes).

Reading accepts any of these prefixes (and `model.diffusion_model.`, bare names, `lora_transformer_`),
in either the original Krea names or diffusers names. Module names come from two single sources of
truth: the Linear layers of diffusers' Krea2Transformer2DModel (so kohya's underscored names are matched
against the known module list, never split on `_`, which `to_out`, `txt_in` and `linear_1` contain) and
weightshop.models.keys for original <-> diffusers renames.

Canonical form: diffusers module name -> LoraModule(down, up, alpha), delta W = up @ down * alpha / rank.
Writing is exact for every consumer: kohya keeps per-module `.alpha` keys (read by ComfyUI and kohya
tools alike); the other formats fold alpha / rank into `up` and declare alpha == rank (metadata for
diffusers; no `.alpha` keys for comfyui / aitoolkit, which diffusers' converter would reject).

DoRA (peft `use_dora`): a module also has a magnitude vector m, one entry per output row, and the adapted
weight is m * V / ||V|| with V = W + strength * delta and the norm taken over each row (`adapted_weight`).
peft, diffusers and aitoolkit name it `<module>.lora_magnitude_vector` with shape (out,); ComfyUI and
kohya/LyCORIS name it `<module>.dora_scale` with shape (out, 1). Both are read and written. At strength 1
every consumer computes the same weight; at other strengths peft scales delta inside the norm (above)
while ComfyUI interpolates between W and the strength-1 weight, so the two differ there.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightshop.errors import WeightshopError
from weightshop.models.keys import diffusers_to_original_key, original_to_diffusers_key

FORMATS = ("diffusers", "comfyui", "kohya", "aitoolkit")
PREFIXES = {"diffusers": "transformer.", "comfyui": "diffusion_model.", "aitoolkit": "base_model.model.",
            "kohya": "lora_unet_"}
ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers' metadata key (peft LoraConfig fields, prefixed)
FORMAT_METADATA = "weightshop_lora"  # what weightshop wrote: format and alpha rule
FORMAT_SPECIFIC_METADATA = ("format", ADAPTER_METADATA, FORMAT_METADATA)

_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")
_DOTTED_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.")
_ROLE = {"lora_A": "down", "lora_down": "down", "lora_B": "up", "lora_up": "up", "dora_scale": "magnitude"}
_DOTTED_KEY = re.compile(r"^(?P<module>.+?)\.(?P<role>lora_A|lora_B|lora_down|lora_up)(?:\.[\w-]+)?\.weight$")
_KOHYA_KEY = re.compile(
    r"^(?:lora_unet_|lora_transformer_)(?P<stem>[^.]+)\.(?P<role>lora_down|lora_up|alpha|dora_scale)(?:\.weight)?$")
_ALPHA_KEY = re.compile(r"^(?P<module>.+)\.alpha$")
_MAGNITUDE_KEY = re.compile(r"^(?P<module>.+?)\.(?:lora_magnitude_vector|dora_scale)(?:\.[\w-]+)*$")
MAGNITUDE_NAMES = {"diffusers": "lora_magnitude_vector", "aitoolkit": "lora_magnitude_vector", "comfyui": "dora_scale",
                   "kohya": "dora_scale"}
_BLOCK_INDEX = re.compile(r"(blocks)\.\d+\.")
# Adapter families a plain LoRA cannot represent: refused by name rather than reported as unmatched keys.
_UNSUPPORTED = {"hada_": "LyCORIS LoHa", "lokr_": "LyCORIS LoKr", ".lora_B.bias": "LoRA with bias",
                ".lora_up.bias": "LoRA with bias"}


@dataclass(frozen=True)
class LoraModule:
    """One adapted Linear: delta W = up @ down * alpha / rank (and, for DoRA, a magnitude per output row)."""

    down: torch.Tensor  # (rank, in_features): peft lora_A, kohya lora_down
    up: torch.Tensor  # (out_features, rank): peft lora_B, kohya lora_up
    alpha: float
    magnitude: torch.Tensor | None = None  # (out_features,): DoRA's m (peft lora_magnitude_vector); None: LoRA

    @property
    def is_dora(self) -> bool:
        return self.magnitude is not None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of the Linear this module adapts."""
        return self.up.shape[0], self.down.shape[1]

    def delta(self) -> torch.Tensor:
        """The weight change at strength 1, in float32."""
        return (self.up.float() @ self.down.float()) * self.scale

    def folded(self) -> "LoraModule":
        """The same delta with alpha == rank: alpha / rank multiplied into `up`.

        Exact when the scale is a power of two; otherwise a bf16/fp16 `up` is kept in float32 so the
        fold adds no rounding beyond float32's.
        """
        s = self.scale
        if s == 1.0:
            return self
        keep_dtype = self.up.dtype in (torch.float32, torch.float64) or math.frexp(abs(s))[0] == 0.5
        up = (self.up.double() if self.up.dtype == torch.float64 else self.up.float()) * s
        return LoraModule(self.down, up.to(self.up.dtype) if keep_dtype else up, float(self.rank), self.magnitude)


def adapted_weight(weight: torch.Tensor, module: LoraModule, strength: float = 1.0) -> torch.Tensor:
    """The weight a Linear computes with once `module` is applied at `strength`, in float32.

    LoRA: W + strength * delta. DoRA, as peft computes it: V = W + strength * delta, then each output row of V
    rescaled to the magnitude m (m * V / ||V||_row); at strength 1 ComfyUI computes the same.
    """
    v = weight.float() + strength * module.delta()
    return v if module.magnitude is None else dora_row_scale(module.magnitude, v) * v


def dora_row_scale(magnitude: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """DoRA's factor per output row, m / ||V||_row, as a column (peft's mag_norm_scale)."""
    return (magnitude.float() / torch.linalg.vector_norm(v, dim=1)).unsqueeze(1)


def dora_modules(canon: "CanonicalLora") -> list[str]:
    return [name for name, m in canon.modules.items() if m.is_dora]


@dataclass
class CanonicalLora:
    """A LoRA in weightshop's canonical form: diffusers module name -> LoraModule."""

    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)  # carried over (format-specific entries removed)
    format: str = "diffusers"  # the layout it was read from
    source: str = "<memory>"
    unmatched: list[str] = field(default_factory=list)  # keys naming no Krea 2 module (non-strict reads only)
    # where alphas came from, modules per source: "alpha keys", "metadata", "folded" (declared), "absent"
    alpha_sources: dict[str, int] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)  # keys holding NaN/inf (non-strict reads only)

    def ranks(self) -> dict[str, int]:
        return {name: m.rank for name, m in self.modules.items()}


# ---------------------------------------------------------------------------------------------------
# Module names: the known list, in both namings


@functools.lru_cache(maxsize=1)
def module_templates() -> tuple[str, ...]:
    """Every Linear of Krea2Transformer2DModel as a diffusers name, `{}` for a block index, in model order."""
    from diffusers import Krea2Transformer2DModel

    with torch.device("meta"):
        model = Krea2Transformer2DModel(num_layers=1, num_layerwise_text_blocks=1, num_refiner_text_blocks=1)
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            template = _BLOCK_INDEX.sub(r"\1.{}.", name)
            if template not in names:
                names.append(template)
    return tuple(names)


def module_to_original(name: str) -> str:
    """diffusers module name -> original Krea name (`transformer_blocks.0.attn.to_q` -> `blocks.0.attn.wq`)."""
    return diffusers_to_original_key(name + ".")[:-1]


def _pattern(template: str, sep: str) -> re.Pattern:
    return re.compile(re.escape(template.replace(".", sep)).replace(r"\{\}", r"(\d+)"))


@functools.lru_cache(maxsize=1)
def _matchers() -> tuple[tuple[re.Pattern, re.Pattern, re.Pattern, str], ...]:
    """Per template: (dotted diffusers, kohya diffusers, kohya original) patterns and the template."""
    return tuple((_pattern(t, "."), _pattern(t, "_"), _pattern(module_to_original(t), "_"), t)
                 for t in module_templates())


def to_diffusers_module(name: str) -> str | None:
    """The diffusers module name of a dotted name in diffusers or original naming (None: no Krea 2 Linear)."""
    for candidate in (name, original_to_diffusers_key(name + ".")[:-1]):
        if any(dotted.fullmatch(candidate) for dotted, _, _, _ in _matchers()):
            return candidate
    return None


def kohya_to_diffusers_module(stem: str) -> str | None:
    """`blocks_0_attn_wq` (or `transformer_blocks_0_attn_to_q`) -> `transformer_blocks.0.attn.to_q`."""
    for _, kohya_diffusers, kohya_original, template in _matchers():
        m = kohya_original.fullmatch(stem) or kohya_diffusers.fullmatch(stem)
        if m:
            return template.format(*m.groups())
    return None


def parse_key(key: str) -> tuple[str | None, str] | None:
    """(diffusers module or None when it names no Krea 2 Linear, role down/up/alpha); None: not a LoRA key."""
    if key.startswith(_KOHYA_PREFIXES):
        m = _KOHYA_KEY.match(key)
        if not m:
            return None
        return kohya_to_diffusers_module(m.group("stem")), _ROLE.get(m.group("role"), m.group("role"))
    m = _DOTTED_KEY.match(key)
    if m:
        module, role = m.group("module"), _ROLE[m.group("role")]
    elif (m := _MAGNITUDE_KEY.match(key)):
        module, role = m.group("module"), "magnitude"
    elif (m := _ALPHA_KEY.match(key)):
        module, role = m.group("module"), "alpha"
    else:
        return None
    for prefix in _DOTTED_PREFIXES:
        module = module.removeprefix(prefix)
    return to_diffusers_module(module), role


# ---------------------------------------------------------------------------------------------------
# Detection and reading


def _made_by_aitoolkit(metadata: dict | None) -> bool:
    return any("ai-toolkit" in str(v).lower() or "ai_toolkit" in str(v).lower() for v in (metadata or {}).values())


def detect_format(keys, metadata: dict | None = None) -> str | None:
    """Which layout a LoRA's keys are in: one of FORMATS, or None when no key looks like a LoRA tensor."""
    keys = list(keys)
    lora = [k for k in keys if _DOTTED_KEY.match(k) or _KOHYA_KEY.match(k)]
    if not lora:
        return None
    if any(k.startswith(_KOHYA_PREFIXES) or ".lora_down." in k for k in lora):
        return "kohya"
    if any(k.startswith("base_model.model.") for k in lora):
        return "aitoolkit"
    if any(k.startswith(("diffusion_model.", "model.diffusion_model.")) for k in lora):
        return "aitoolkit" if _made_by_aitoolkit(metadata) else "comfyui"
    if any(k.startswith("transformer.") for k in lora):
        return "diffusers"
    # Bare names: named by their naming scheme.
    modules = [m.group("module") for k in lora if (m := _DOTTED_KEY.match(k))]
    return "diffusers" if any(to_diffusers_module(m) == m for m in modules) else "comfyui"


def _adapter_config(metadata: dict, source: str) -> dict | None:
    raw = metadata.get(ADAPTER_METADATA)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightshopError(f"LoRA file {source}: metadata {ADAPTER_METADATA} is not JSON ({e.msg})") from None
    config = {k.removeprefix("transformer."): v for k, v in config.items()}
    return config


def _metadata_alpha(config: dict | None, module: str, rank: int) -> float | None:
    """The alpha peft would use for `module` from a LoraConfig dict (alpha_pattern, rsLoRA respected)."""
    if not config or config.get("lora_alpha") is None:
        return None
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # peft's get_pattern_key rule
            alpha = float(value)
            break
    # rsLoRA scales by alpha / sqrt(rank): the plain-LoRA alpha with the same scale is alpha * sqrt(rank).
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _declared_folded(metadata: dict) -> bool:
    """Whether weightshop wrote this file with alpha / rank folded into lora_B (alpha == rank is then a fact)."""
    try:
        return json.loads(metadata.get(FORMAT_METADATA) or "{}").get("format") in ("diffusers", "comfyui", "aitoolkit")
    except (json.JSONDecodeError, AttributeError):
        return False


def describe_keys(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def no_lora_tensors(source, keys) -> WeightshopError:
    """The error for a file with no LoRA tensor, saying what it is instead when its keys tell (a full checkpoint)."""
    from weightshop.models.keys import is_diffusers_layout, is_original_layout

    what = " it is a full Krea 2 transformer checkpoint, not a LoRA;" if (
        is_original_layout(keys) or is_diffusers_layout(keys)) else ""
    return WeightshopError(f"LoRA file {source} has no LoRA tensors (lora_A/lora_B or lora_down/lora_up);{what} "
                           f"its keys: {describe_keys(sorted(keys)) or 'none'}")


def to_canonical(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 source: str | Path = "<memory>", strict: bool = True) -> CanonicalLora:
    """Any supported layout -> CanonicalLora, checked: pairs complete, ranks agree, values finite.

    strict=False records keys that name no Krea 2 module in `.unmatched` and keys holding NaN/inf in
    `.nonfinite` instead of refusing the file (for inspection); every other problem is an error either way.
    """
    source, metadata = str(source), dict(metadata or {})
    fmt = detect_format(tensors, metadata)
    if fmt is None:
        raise no_lora_tensors(source, tensors)
    for marker, family in _UNSUPPORTED.items():
        hits = [k for k in tensors if marker in k]
        if hits:
            raise WeightshopError(f"LoRA file {source} is a {family} adapter ({hits[0]}): weightshop handles plain "
                                  "LoRA (lora_A/lora_B or lora_down/lora_up) only")
    parts: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    unmatched = []
    for key, value in tensors.items():
        parsed = parse_key(key)
        if parsed is None or parsed[0] is None:
            unmatched.append(key)
            continue
        module, role = parsed
        if role in parts.setdefault(module, {}):
            raise WeightshopError(f"LoRA file {source}: {key} and {parts[module][role][0]} both give the {role} "
                                  f"tensor of {module}")
        parts[module][role] = (key, value)
    if unmatched and strict:
        raise WeightshopError(
            f"LoRA file {source} does not fit a Krea 2 transformer: {len(unmatched)} of its {len(tensors)} keys "
            f"name no Krea 2 Linear layer (e.g. {describe_keys(sorted(unmatched))}); expected keys such as "
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight or lora_unet_blocks_0_attn_wq.lora_down.weight"
        )
    config = _adapter_config(metadata, source)
    declared_folded = _declared_folded(metadata)
    modules: dict[str, LoraModule] = {}
    alpha_from: collections.Counter = collections.Counter()
    nonfinite: list[str] = []
    for module, p in parts.items():
        missing = [r for r in ("down", "up") if r not in p]
        if missing:
            have = ", ".join(k for k, _ in p.values())
            raise WeightshopError(f"LoRA file {source}: module {module} has {have} but no {missing[0]} tensor "
                                  "(lora_A/lora_down is down, lora_B/lora_up is up)")
        (down_key, down), (up_key, up) = p["down"], p["up"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise WeightshopError(f"LoRA file {source}: {down_key} {tuple(down.shape)} and {up_key} {tuple(up.shape)} "
                                  "are not a LoRA pair (expected (rank, in) and (out, rank))")
        for key, t in (p["down"], p["up"]):
            if not torch.isfinite(t).all():
                nonfinite.append(key)
                if strict:
                    raise WeightshopError(f"LoRA file {source}: {key} (module {module}) holds NaN or inf values")
        if "alpha" in p:
            key, t = p["alpha"]
            if t.numel() != 1 or not torch.isfinite(t).all():
                raise WeightshopError(f"LoRA file {source}: {key} must be one finite number, got {t.numel()} "
                                      f"values of shape {tuple(t.shape)}")
            alpha, origin = float(t.float().item()), "alpha keys"
        else:
            alpha, origin = _metadata_alpha(config, module, down.shape[0]), "metadata"
            if alpha is None:
                alpha, origin = float(down.shape[0]), "folded" if declared_folded else "absent"
        alpha_from[origin] += 1
        magnitude = None
        if "magnitude" in p:
            key, t = p["magnitude"]
            if t.numel() != up.shape[0] or t.squeeze().ndim > 1:
                raise WeightshopError(f"LoRA file {source}: DoRA magnitude {key} has shape {tuple(t.shape)}; module "
                                      f"{module} has {up.shape[0]} output rows, so expected ({up.shape[0]},) or "
                                      f"({up.shape[0]}, 1)")
            if not torch.isfinite(t).all():
                nonfinite.append(key)
                if strict:
                    raise WeightshopError(f"LoRA file {source}: {key} (module {module}) holds NaN or inf values")
            magnitude = t.reshape(-1)
        modules[module] = LoraModule(down, up, alpha, magnitude)
    if not modules:
        raise WeightshopError(f"LoRA file {source} has no LoRA tensors for any Krea 2 module "
                              f"(its keys: {describe_keys(sorted(tensors))})")
    dora = [name for name, m in modules.items() if m.is_dora]
    if dora and len(dora) != len(modules):
        plain = sorted(set(modules) - set(dora))
        raise WeightshopError(f"LoRA file {source} mixes DoRA and plain LoRA modules ({len(dora)} have a magnitude "
                              f"vector, {len(plain)} do not, e.g. {plain[0]}): peft and diffusers apply DoRA to every "
                              "module of an adapter or to none, so this file cannot be applied as written")
    if (config or {}).get("use_dora") and not dora:
        raise WeightshopError(f"LoRA file {source} declares use_dora in {ADAPTER_METADATA} but holds no magnitude "
                              "vectors (lora_magnitude_vector or dora_scale keys): the file is incomplete")
    carried = {k: v for k, v in metadata.items() if k not in FORMAT_SPECIFIC_METADATA}
    return CanonicalLora(modules, carried, fmt, source, unmatched, dict(alpha_from), nonfinite)


def from_peft_state(state: dict[str, torch.Tensor], alpha: float, metadata: dict[str, str] | None = None,
                    source: str = "<peft adapter>") -> CanonicalLora:
    """A peft adapter's state dict (get_peft_model_state_dict names, with or without `base_model.model.`) trained
    with one `alpha`, as a CanonicalLora carrying `metadata` (how the trainer's LoRA reaches the one writer)."""
    tensors = {f"transformer.{k.removeprefix('base_model.model.')}": v for k, v in state.items()}
    return to_canonical(tensors, {**(metadata or {}), ADAPTER_METADATA: json.dumps({"lora_alpha": float(alpha)})},
                        source=source)


def load_canonical(path: str | Path, strict: bool = True) -> CanonicalLora:
    """Read a LoRA file in any supported layout into the canonical form."""
    from weightshop.lora.files import read_lora_file

    tensors, metadata = read_lora_file(path)
    return to_canonical(tensors, metadata, source=path, strict=strict)


# ---------------------------------------------------------------------------------------------------
# Writing


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise WeightshopError(f"unknown LoRA format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def peft_metadata(ranks: dict[str, int], dora: bool = False) -> dict:
    """diffusers' lora_adapter_metadata for modules with these ranks and alpha == rank everywhere."""
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    pattern = {name: rank for name, rank in ranks.items() if rank != r}
    config = {"r": r, "lora_alpha": float(r), "rank_pattern": pattern,
              "alpha_pattern": {k: float(v) for k, v in pattern.items()},
              "target_modules": sorted(ranks), "use_dora": dora, "use_rslora": False}
    return {f"transformer.{k}": v for k, v in config.items()}


def from_canonical(canon: CanonicalLora, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the LoRA in layout `fmt`; every consumer of that layout gets the same delta."""
    check_format(fmt)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in canon.modules.items():
        if fmt == "kohya":
            stem = PREFIXES["kohya"] + module_to_original(name).replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = module.down
            tensors[f"{stem}.lora_up.weight"] = module.up
            tensors[f"{stem}.alpha"] = torch.tensor(module.alpha, dtype=torch.float32)
        else:
            f = module.folded()
            stem = PREFIXES[fmt] + (name if fmt == "diffusers" else module_to_original(name))
            tensors[f"{stem}.lora_A.weight"] = f.down
            tensors[f"{stem}.lora_B.weight"] = f.up
        if module.is_dora:
            magnitude = module.magnitude.contiguous()
            tensors[f"{stem}.{MAGNITUDE_NAMES[fmt]}"] = (magnitude if MAGNITUDE_NAMES[fmt] == "lora_magnitude_vector"
                                                         else magnitude.unsqueeze(1))
    metadata = {k: v for k, v in canon.metadata.items() if k not in FORMAT_SPECIFIC_METADATA}
    if fmt == "diffusers":
        metadata["format"] = "pt"
        metadata[ADAPTER_METADATA] = json.dumps(peft_metadata(canon.ranks(), bool(dora_modules(canon))),
                                                sort_keys=True)
    alpha_rule = ("per-module .alpha keys (delta = up @ down * alpha / rank)" if fmt == "kohya"
                  else "alpha == rank: alpha / rank folded into lora_B (delta = lora_B @ lora_A)")
    metadata[FORMAT_METADATA] = json.dumps({"format": fmt, "alpha": alpha_rule, "read_from": canon.format})
    return tensors, metadata


def diffusers_state_dict(canon: CanonicalLora) -> dict[str, torch.Tensor]:
    """The peft/diffusers state dict (alpha folded, so it needs no metadata) that load_lora_weights takes."""
    return from_canonical(canon, "diffusers")[0]


def save_canonical(canon: CanonicalLora, path: str | Path, fmt: str = "diffusers") -> Path:
    from weightshop.lora.files import write_lora_file

    tensors, metadata = from_canonical(canon, fmt)
    return write_lora_file(path, tensors, metadata)


def convert_file(src: str | Path, dst: str | Path, to: str) -> Path:
    """Convert a LoRA file to layout `to` (atomic write); the delta every consumer applies is unchanged."""
    check_format(to)
    return save_canonical(load_canonical(src), dst, to)


# ---------------------------------------------------------------------------------------------------
# Fit against a model


def linear_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear of a transformer, by module name (peft-wrapped layers included). Read from the
    layer's features, not its weight: a quantized base stores blocks (GGUF) whose tensor shape is not (out, in)."""
    shapes = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name.removesuffix(".base_layer")] = (module.out_features, module.in_features)
    return shapes


def fit_problems(canon: CanonicalLora, shapes: dict[str, tuple[int, int]]) -> list[str]:
    """Why a LoRA does not fit a model with these Linear shapes (empty when every module fits)."""
    problems = []
    for name, module in canon.modules.items():
        if name not in shapes:
            problems.append(f"module {name} does not exist in this model")
        elif tuple(shapes[name]) != module.shape:
            out, inp = shapes[name]
            problems.append(f"module {name}: the model's weight is (out, in) = ({out}, {inp}) but the LoRA's is "
                            f"{module.shape} (lora_A {tuple(module.down.shape)}, lora_B {tuple(module.up.shape)})")
    return problems
