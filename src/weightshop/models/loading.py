"""Load Krea 2 the ways users hold it, and build pipelines with the right sampler settings.

Accepted sources:
1. a diffusers-format directory (model_index.json + transformer/ vae/ text_encoder/ tokenizer/);
2. the official single-file transformer (`raw.safetensors` / `turbo.safetensors`, original key names,
   or a diffusers-named file) plus a directory holding the shared VAE / text encoder / tokenizer;
3. a hub repository id (e.g. krea/Krea-2-Raw), fetched through huggingface_hub's cache;
4. a built-in name (krea2-nano-raw, krea2-nano-turbo) once the nano family is installed.
Raw and Turbo can share one VAE and text encoder in memory (`load_pair`).

Every pipeline gets its scheduler config and `is_distilled` from weightshop.models.spec, never from
diffusers' defaults, which are wrong for both checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weightshop.errors import WeightshopError
from weightshop.io import read_json, safetensors_shapes
from weightshop.models import builtin
from weightshop.models.device import use_cpu_threads
from weightshop.models.keys import is_diffusers_layout, is_original_layout, original_to_diffusers
from weightshop.models.placement import Placement, place
from weightshop.models.shape import infer_transformer_config, original_shapes_to_diffusers, weight_files
from weightshop.models.spec import KREA2, CheckpointSpec, FamilySpec

COMPONENTS = ("vae", "text_encoder", "tokenizer")
MODEL_DEFAULTS = "weightshop.json"  # optional per-model defaults written by weightshop (size, text length, name)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}




def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise WeightshopError(f"unknown dtype {dtype!r}: expected auto, bf16, fp16 or fp32") from None


@dataclass
class ModelSource:
    """Where a transformer and its shared components live, after resolution."""

    kind: str  # "diffusers" or "single_file"
    transformer: Path  # pipeline directory (diffusers) or transformer file (single_file)
    components: Path  # directory with vae/ text_encoder/ tokenizer/
    checkpoint: str  # "raw" or "turbo"
    model_id: str  # what the user named, for provenance
    defaults: dict = field(default_factory=dict)  # the model's weightshop.json: name, default size, text length
    family: FamilySpec = KREA2

    @property
    def name(self) -> str:
        return self.defaults.get("name") or self.model_id

    @property
    def default_size(self) -> int:
        return int(self.defaults.get("default_size", self.family.default_size))

    @property
    def max_sequence_length(self) -> int:
        return int(self.defaults.get("max_sequence_length", self.family.max_sequence_length))


def _has_components(path: Path) -> bool:
    return all((path / name).is_dir() for name in COMPONENTS)


def _missing_components(path: Path) -> list[str]:
    return [name for name in COMPONENTS if not (path / name).is_dir()]


def _guess_checkpoint(name: str) -> str | None:
    lowered = name.lower()
    if "turbo" in lowered:
        return "turbo"
    if "raw" in lowered:
        return "raw"
    return None


def _looks_like_repo_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith((".", "/"))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                               "*.jinja", "tokenizer*"]))
    except Exception as e:  # network, auth, offline cache miss: all end the same way for the user
        raise WeightshopError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Pass a local diffusers directory or a .safetensors file instead, or set HF_HUB_OFFLINE=1 "
            "to use a copy already in the cache"
        ) from None


def resolve_source(model: str | Path, components: str | Path | None = None,
                   checkpoint: str | None = None, family: FamilySpec = KREA2) -> ModelSource:
    """Work out what `model` is (directory, single file, hub id, built-in name) and which checkpoint."""
    model_id = str(model)
    if checkpoint is not None:
        checkpoint = family.checkpoint(checkpoint).name
    if model_id in builtin.NAMES:
        model = builtin.model_dir(model_id)
    path = Path(model).expanduser()
    if not path.exists():
        if _looks_like_repo_id(model_id):
            path = _download(model_id)
        else:
            raise WeightshopError(
                f"model {model_id!r} not found: expected a diffusers directory (with model_index.json), "
                "a Krea 2 transformer .safetensors or .gguf file (with --components DIR), a hub id such as "
                f"krea/Krea-2-Raw, or a built-in name ({', '.join(sorted(builtin.NAMES))})"
            )
    comp = Path(components).expanduser() if components is not None else None
    if comp is not None:
        if not comp.is_dir():
            raise WeightshopError(f"components directory {comp} does not exist")
        if _missing_components(comp):
            raise WeightshopError(
                f"components directory {comp} lacks {', '.join(_missing_components(comp))}/: it must hold "
                "vae/, text_encoder/ and tokenizer/ subfolders in diffusers layout"
            )

    if path.is_file():
        if path.suffix not in (".safetensors", ".gguf"):
            raise WeightshopError(
                f"{path} is not a .safetensors file or a .gguf file: weightshop loads weights only from safetensors "
                "and GGUF (never pickled .bin/.pt/.ckpt files)"
            )
        comp = comp or (path.parent if _has_components(path.parent) else None)
        if comp is None:
            raise WeightshopError(
                f"{path} holds only the transformer: pass --components DIR, a directory with the shared "
                "vae/, text_encoder/ and tokenizer/ (for example a diffusers Krea 2 directory)"
            )
        defaults = read_json(comp / MODEL_DEFAULTS)
        ckpt = checkpoint or _guess_checkpoint(path.name) or defaults.get("checkpoint") or "raw"
        return ModelSource("single_file", path, comp, ckpt, model_id, defaults, family)

    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json")
        if index.get("_class_name") not in (None, "Krea2Pipeline"):
            raise WeightshopError(
                f"{path} is a {index.get('_class_name')} directory, not Krea 2 (expected Krea2Pipeline)"
            )
        missing = [n for n in ("transformer", *COMPONENTS) if not (path / n).is_dir()]
        if missing and comp is None:
            raise WeightshopError(
                f"{path} is missing {', '.join(m + '/' for m in missing)}: a Krea 2 diffusers directory "
                "needs transformer/, vae/, text_encoder/ and tokenizer/ (or pass --components DIR)"
            )
        if "transformer" in missing:
            raise WeightshopError(f"{path} has no transformer/ subfolder")
        defaults = read_json(path / MODEL_DEFAULTS)
        guessed = "turbo" if index.get("is_distilled") else None
        ckpt = checkpoint or defaults.get("checkpoint") or guessed or _guess_checkpoint(path.name) or "raw"
        return ModelSource("diffusers", path, comp or path, ckpt, model_id, defaults, family)

    if path.is_dir():
        # An official-style folder: raw.safetensors / turbo.safetensors beside the shared components.
        files = {spec.name: path / spec.single_file for spec in family.checkpoints.values()}
        present = {name: f for name, f in files.items() if f.is_file()}
        if present and (comp or _has_components(path)):
            ckpt = checkpoint or ("raw" if "raw" in present else next(iter(present)))
            if ckpt not in present:
                raise WeightshopError(f"{path} has no {files[ckpt].name} (found {', '.join(present)})")
            return resolve_source(present[ckpt], comp or path, ckpt, family)
        raise WeightshopError(
            f"{path} is neither a diffusers Krea 2 directory (no model_index.json) nor a folder holding "
            f"{' / '.join(f.name for f in files.values())} with vae/, text_encoder/, tokenizer/"
        )
    raise WeightshopError(f"{path} is not a file or directory weightshop can load")


# ---------------------------------------------------------------------------------------------------
# Transformer


def transformer_hash(source: ModelSource) -> str:
    """sha256 of the transformer weights (of the sorted shard hashes when sharded)."""
    from weightshop.io import cached_sha256, sha256_bytes

    hashes = [cached_sha256(f) for f in weight_files(source)]
    return hashes[0] if len(hashes) == 1 else sha256_bytes("".join(hashes).encode())


def kept_in_fp32(model: torch.nn.Module, name: str) -> bool:
    """diffusers' rule: a parameter whose name contains one of the model's `_keep_in_fp32_modules` (the norms)."""
    return any(k in name for k in (getattr(model, "_keep_in_fp32_modules", None) or []))


def cast_like_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast like diffusers' from_pretrained: the modules it keeps in fp32 (norms) stay fp32."""
    model.to(dtype)
    if dtype != torch.float32:
        for name, param in model.named_parameters():
            if param.is_floating_point() and kept_in_fp32(model, name):
                param.data = param.data.float()
    return model


def load_single_file_transformer(path: str | Path, config: dict | str | Path | None = None,
                                 dtype: torch.dtype = torch.float32):
    """Load a Krea 2 transformer from one safetensors file, original or diffusers key names, offline. Quantized files
    (ComfyUI comfy_quant / fp8_scaled, GGUF) load through `models.quantized`, their weights kept quantized."""
    from accelerate import init_empty_weights
    from diffusers import Krea2Transformer2DModel
    from safetensors.torch import load_file

    from weightshop.models.quantized import is_quantized_file, load_quantized_transformer

    path = Path(path)
    if is_quantized_file(path):
        return load_quantized_transformer(path, config, dtype)
    keys = safetensors_shapes(path)
    original = is_original_layout(keys)
    if not original and not is_diffusers_layout(keys):
        sample = ", ".join(list(keys)[:3]) or "no tensors"
        raise WeightshopError(
            f"{path} is not a Krea 2 transformer: it has no txtfusion.projector / text_fusion.projector "
            f"weight (first keys: {sample})"
        )
    inferred = infer_transformer_config(original_shapes_to_diffusers(keys) if original else keys)
    config = merge_transformer_config(path, inferred, config)

    state = load_file(str(path))
    if original:
        state = original_to_diffusers(state)
    with init_empty_weights():
        model = Krea2Transformer2DModel.from_config(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise WeightshopError(
            f"{path} does not fit Krea2Transformer2DModel: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return cast_like_pretrained(model.eval(), dtype)


def merge_transformer_config(path: Path, inferred: dict, config: dict | str | Path | None) -> dict:
    """The config a single file loads with: what its shapes say, completed (never contradicted) by `config` (a dict,
    a config.json or a folder holding one)."""
    if isinstance(config, (str, Path)):
        config_path = Path(config)
        config_path = config_path / "config.json" if config_path.is_dir() else config_path
        config = read_json(config_path) or None
    if config:
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        clash = {k: (v, config.get(k)) for k, v in inferred.items()
                 if k in config and tuple(np_list(config[k])) != tuple(np_list(v))}
        if clash:
            detail = "; ".join(f"{k}: file {a}, config {b}" for k, (a, b) in clash.items())
            raise WeightshopError(f"{path} does not match its transformer config ({detail})")
        return {**inferred, **config}
    if "axes_dims_rope" not in inferred:
        raise WeightshopError(
            f"{path} has head_dim {inferred['attention_head_dim']} (not Krea 2's 128), so its rotary split "
            "cannot be inferred: put a transformer/config.json in the components directory"
        )
    return inferred


def np_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_transformer(source: ModelSource, dtype: torch.dtype = torch.float32):
    from diffusers import Krea2Transformer2DModel

    if source.kind == "single_file":
        config_dir = source.components / "transformer"
        return load_single_file_transformer(source.transformer, config_dir if config_dir.is_dir() else None, dtype)
    try:
        return Krea2Transformer2DModel.from_pretrained(source.transformer, subfolder="transformer",
                                                       torch_dtype=dtype).eval()
    except (OSError, ValueError) as e:
        raise WeightshopError(f"could not load {source.transformer / 'transformer'}: {e}") from None


# ---------------------------------------------------------------------------------------------------
# Shared components (VAE, text encoder, tokenizer)


@dataclass
class SharedComponents:
    vae: Any
    text_encoder: Any
    tokenizer: Any
    select_layers: tuple[int, ...]
    path: Path


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32):
    """The shared VAE of a components directory, with the single-frame fast paths (`models.qwen_vae`)."""
    from diffusers import AutoencoderKLQwenImage

    from weightshop.models.qwen_vae import use_fast_paths

    path = Path(path)
    try:
        vae = AutoencoderKLQwenImage.from_pretrained(path, subfolder="vae", torch_dtype=dtype).eval()
    except (OSError, ValueError) as e:
        raise WeightshopError(f"could not load the VAE from {path / 'vae'}: {e}") from None
    use_fast_paths(vae)
    return vae


def text_encoder_select_layers(path: str | Path, family: FamilySpec = KREA2) -> tuple[int, ...]:
    path = Path(path)
    index = read_json(path / "model_index.json") or read_json(path / MODEL_DEFAULTS)
    return tuple(index.get("text_encoder_select_layers") or family.text_encoder_select_layers)


def load_text_encoder(path: str | Path, dtype: torch.dtype = torch.float32, family: FamilySpec = KREA2):
    """(text encoder, tokenizer, tapped layers) of a components directory, checked against each other."""
    from transformers import AutoTokenizer, Qwen3VLModel

    path = Path(path)
    try:
        text_encoder = Qwen3VLModel.from_pretrained(path / "text_encoder", dtype=dtype).eval()
    except (OSError, ValueError) as e:
        raise WeightshopError(f"could not load the text encoder from {path / 'text_encoder'}: {e}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    except (OSError, ValueError) as e:
        raise WeightshopError(f"could not load the tokenizer from {path / 'tokenizer'}: {e}") from None
    layers = text_encoder_select_layers(path, family)
    depth = text_encoder.config.text_config.num_hidden_layers
    if max(layers) > depth:
        raise WeightshopError(
            f"text encoder in {path / 'text_encoder'} has {depth} layers but the taps reach layer {max(layers)}: "
            "set text_encoder_select_layers in model_index.json to layers <= its depth"
        )
    return text_encoder, tokenizer, layers


def load_components(path: str | Path, dtype: torch.dtype = torch.float32,
                    family: FamilySpec = KREA2) -> SharedComponents:
    path = Path(path)
    if _missing_components(path):
        raise WeightshopError(f"{path} lacks {', '.join(_missing_components(path))}/ (Krea 2 needs vae/, "
                              "text_encoder/, tokenizer/)")
    vae = load_vae(path, dtype)
    text_encoder, tokenizer, layers = load_text_encoder(path, dtype, family)
    return SharedComponents(vae, text_encoder, tokenizer, layers, path)


def text_pipeline(text_encoder, tokenizer, select_layers: tuple[int, ...]):
    """A Krea2Pipeline holding only the text side, to run its own prompt encoding (template, taps, mask)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline

    return Krea2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(KREA2.scheduler_config()),
                         vae=None, text_encoder=text_encoder, tokenizer=tokenizer, transformer=None,
                         text_encoder_select_layers=select_layers)


# ---------------------------------------------------------------------------------------------------
# Pipelines


@dataclass
class LoadedModel:
    """A ready Krea2Pipeline with the facts generation and provenance need."""

    pipeline: Any
    checkpoint: CheckpointSpec
    source: ModelSource
    family: FamilySpec = KREA2
    placement: Placement = field(default_factory=Placement)  # the memory mode it was placed with

    @property
    def vae_scale_factor(self) -> int:
        return self.pipeline.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        return self.pipeline.vae_scale_factor * self.pipeline.patch_size

    @property
    def default_size(self) -> int:
        return self.source.default_size

    @property
    def max_sequence_length(self) -> int:
        return self.source.max_sequence_length

    @property
    def name(self) -> str:
        return self.source.name

    def transformer_hash(self) -> str:
        return transformer_hash(self.source)


def _check_fit(transformer, shared: SharedComponents, source: ModelSource) -> None:
    cfg = transformer.config
    width = shared.text_encoder.config.text_config.hidden_size
    if len(shared.select_layers) != cfg.num_text_layers or width != cfg.text_hidden_dim:
        raise WeightshopError(
            f"the text encoder in {shared.path} ({len(shared.select_layers)} taps x {width}) does not fit the "
            f"transformer of {source.model_id} ({cfg.num_text_layers} taps x {cfg.text_hidden_dim})"
        )
    z = shared.vae.config.z_dim
    if z * 4 != cfg.in_channels:
        raise WeightshopError(
            f"the VAE in {shared.path} has {z} latent channels but the transformer of {source.model_id} "
            f"expects {cfg.in_channels // 4} (in_channels {cfg.in_channels} = channels x 2x2 patch)"
        )


def build_pipeline(transformer, shared: SharedComponents, checkpoint: CheckpointSpec,
                   family: FamilySpec = KREA2):
    """A Krea2Pipeline with weightshop's scheduler config and the checkpoint's is_distilled flag."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Pipeline

    from weightshop.models.qwen_vae import use_fast_paths

    use_fast_paths(shared.vae)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(family.scheduler_config())
    pipe = Krea2Pipeline(
        scheduler=scheduler,
        vae=shared.vae,
        text_encoder=shared.text_encoder,
        tokenizer=shared.tokenizer,
        transformer=transformer,
        text_encoder_select_layers=shared.select_layers,
        is_distilled=checkpoint.is_distilled,
        patch_size=family.patch_size,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _place(pipe, device: str, placement: Placement) -> None:
    """The memory modes live in `models.placement`."""
    place(pipe, device, placement)


def _check_device(device: str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WeightshopError(f"device {device!r} requested but CUDA is not available (run `weightshop doctor`)")


def load_model(model: str | Path, *, components: str | Path | None = None, checkpoint: str | None = None,
               dtype: str | torch.dtype | None = "auto", device: str = "cpu", offload: str = "none",
               shared: SharedComponents | None = None, family: FamilySpec = KREA2, vae_tiling: bool = False,
               vae_slicing: bool = False, text_encoder: str = "keep", group_level: str = "block",
               blocks_per_group: int = 1) -> LoadedModel:
    """Load one checkpoint (Raw or Turbo) as a ready pipeline. Pass `shared` to reuse components. On the CPU,
    torch's threads are lowered to `cpu_threads()` (rendering on a busy machine stalls with every core).
    offload / group_level / blocks_per_group / vae_tiling / vae_slicing / text_encoder: the memory mode
    (`models.placement.Placement`), checked before any weight is read."""
    placement = Placement(offload, group_level, blocks_per_group, vae_tiling, vae_slicing, text_encoder)
    _check_device(device)
    if torch.device(device).type == "cpu":
        use_cpu_threads()
    source = resolve_source(model, components, checkpoint, family)
    torch_dtype = resolve_dtype(dtype, device)
    transformer = load_transformer(source, torch_dtype)
    shared = shared or load_components(source.components, torch_dtype, family)
    _check_fit(transformer, shared, source)
    pipe = build_pipeline(transformer, shared, family.checkpoint(source.checkpoint), family)
    _place(pipe, device, placement)
    return LoadedModel(pipe, family.checkpoint(source.checkpoint), source, family, placement)


@dataclass
class ModelPair:
    """Raw and Turbo sharing one VAE, text encoder and tokenizer (the training/transfer setup)."""

    raw: LoadedModel
    turbo: LoadedModel


def load_pair(raw: str | Path, turbo: str | Path, *, components: str | Path | None = None,
              dtype: str | torch.dtype | None = "auto", device: str = "cpu", offload: str = "none",
              family: FamilySpec = KREA2) -> ModelPair:
    raw_model = load_model(raw, components=components, checkpoint="raw", dtype=dtype, device=device,
                           offload=offload, family=family)
    shared = SharedComponents(raw_model.pipeline.vae, raw_model.pipeline.text_encoder,
                              raw_model.pipeline.tokenizer, raw_model.pipeline.text_encoder_select_layers,
                              raw_model.source.components)
    turbo_model = load_model(turbo, components=components, checkpoint="turbo", dtype=dtype, device=device,
                             offload=offload, shared=shared, family=family)
    return ModelPair(raw_model, turbo_model)
