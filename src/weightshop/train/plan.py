"""Predict the peak memory of a LoRA training run before starting it, and what to change when it won't fit.

The prediction adds up what lives on the GPU at the worst moment of a step (the start of the backward pass):

  frozen base weights     counted on the meta device from the real config (no weights read), by dtype:
                          norms stay fp32 (diffusers' _keep_in_fp32_modules, as loading.py keeps them),
                          the blocks' Linear weights in memory.base_dtype (fp8/int8/nf4, plus their scales)
  LoRA, grads, optimizer  LoRA parameters (peft, on the meta model) in fp32, their fp32 grads, the optimizer
                          state (AdamW 2 x fp32, adamw8bit 2 x 1 byte, Prodigy 4 x fp32) and an EMA copy
  activations             the tensors autograd saves for backward, per token, term by term
                          (`block_activation_bytes`), for every block, or with gradient checkpointing only each
                          block's input plus one recomputed block; plus the backward working set
  overhead                CUDA context and library workspaces, and the caching allocator's fragmentation

The activation terms were read off the saved tensors of diffusers 0.42.1's Krea2TransformerBlock under peft
0.21 (torch.autograd.graph.saved_tensors_hooks) and are checked against real peaks by `measure_step_peak`
on CPU in tests/test_plan.py; docs/memory.md has the calibration table.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from weightshop.errors import WeightshopError

BASE_DTYPES = ("none", "fp8", "fp8-mm", "int8", "nf4")  # memory.base_dtype: how the frozen blocks are stored

GiB = 2**30
# CUDA context and kernel images (~0.4-0.6 GiB with torch 2.x on H100, outside the caching allocator) plus
# cuBLAS/cuDNN workspaces and the SDPA kernels' scratch (~0.2 GiB): memory the training tensors never get.
CUDA_OVERHEAD = int(0.75 * GiB)
# The caching allocator reserves more than is allocated (block rounding, split blocks that cannot be reused):
# in training loops reserved/allocated peaks run 1.03-1.10; 5 % of the allocated peak is the margin.
FRAGMENTATION = 0.05
OVERHEAD_PARTS = ("CUDA context and workspaces", "allocator fragmentation")  # not tensors: not in max_memory_allocated
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Optimizer state bytes per LoRA parameter: AdamW exp_avg + exp_avg_sq in fp32; bitsandbytes AdamW8bit the same
# in 8 bits plus one fp32 absmax per 256 values each; Prodigy exp_avg, exp_avg_sq, s and the initial copy p0.
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2 * (1 + 4 / 256), "prodigy": 16.0}

# Named cards as nvidia-smi reports their memory (MiB). GPU labels are binary: a "24 GB" RTX 4090 has 24564 MiB.
GPUS_MIB = {
    "4090": 24564, "rtx4090": 24564, "3090": 24576, "rtx3090": 24576, "5090": 32607, "rtx5090": 32607,
    "a6000": 49140, "l40s": 46068, "a100": 81920, "a100-80gb": 81920, "a100-40gb": 40960,
    "h100": 81559, "h100-80gb": 81559, "h200": 143771,
}


def parse_gpu(text: str) -> int:
    """GPU memory in bytes from "24GB", "24GiB", "24", "24564MiB", "H100" or "4090". GB means GiB here (card labels)."""
    key = str(text).strip().lower().replace(" ", "").replace("_", "-")
    if key in GPUS_MIB:
        return GPUS_MIB[key] * 2**20
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(gib|gb|g|mib|mb|m)?", key)
    if not match or float(match.group(1)) <= 0:
        cards = sorted(k for k in GPUS_MIB if "-" not in k and not k.startswith("rtx"))
        raise WeightshopError(f"--gpu {text!r}: expected a size such as 24GB, 24GiB, 80 or 24564MiB, or a card name "
                              f"({', '.join(cards)})")
    scale = 2**20 if (match.group(2) or "g").startswith("m") else GiB
    return int(float(match.group(1)) * scale)


# ---------------------------------------------------------------------------------------------------
# The model's shape


@dataclass(frozen=True)
class ModelShape:
    """What the prediction needs to know about a transformer: its config and how pixels become tokens."""

    name: str
    config: dict  # Krea2Transformer2DModel's config
    vae_scale_factor: int
    patch_size: int
    max_sequence_length: int
    default_size: int = 1024

    def image_tokens(self, height: int, width: int) -> int:
        from weightshop.models.schedule import image_tokens

        return image_tokens(height, width, self.vae_scale_factor, self.patch_size)

    def key(self) -> str:
        return json.dumps(self.config, sort_keys=True, default=list)


def _defaults(cls) -> dict:
    import inspect

    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _vae_scale(vae_config: dict) -> int:
    # Krea2Pipeline's own rule: one spatial halving per temporal-downsample entry.
    return 2 ** len(vae_config["temperal_downsample"])


def full_size_shape() -> ModelShape:
    """Krea 2 at full size: the diffusers defaults of Krea2Transformer2DModel and of the Qwen-Image VAE."""
    from diffusers import AutoencoderKLQwenImage, Krea2Transformer2DModel

    from weightshop.models.spec import KREA2

    config = {k: list(v) if isinstance(v, tuple) else v for k, v in _defaults(Krea2Transformer2DModel).items()}
    return ModelShape("krea2 (full size)", config, _vae_scale(_defaults(AutoencoderKLQwenImage)), KREA2.patch_size,
                      KREA2.max_sequence_length)


def _nano_recipe_shape(name: str) -> ModelShape:
    """krea2-nano's shape from its recipe, when the committed weights are not built yet."""
    import torch

    from weightshop.models.spec import KREA2
    from weightshop.nano.build import NanoRecipe
    from weightshop.nano.pretrain import build_transformer

    recipe = NanoRecipe()
    with torch.device("meta"):
        model = build_transformer(recipe.vae.z_dim * 4, recipe.text.hidden, len(recipe.text.select_layers),
                                  recipe.transformer)
    vae_scale = 2 ** (len(recipe.vae.dim_mult) - 1)  # nano.vae: temperal_downsample has len(dim_mult) - 1 entries
    return ModelShape(f"{name} (recipe)", dict(model.config), vae_scale, KREA2.patch_size,
                      recipe.text.max_sequence_length, recipe.size)


def _json(path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def model_shape(model: str, components: str | None = None) -> ModelShape:
    """The shape of a model as the run config names it (directory, single file, hub id, built-in), from configs and
    safetensors headers only."""
    from diffusers import AutoencoderKLQwenImage

    from weightshop.models.loading import MANIFEST, resolve_source
    from weightshop.models.spec import KREA2
    from weightshop.nano import family

    if model in family.NAMES and not family.installed():
        return _nano_recipe_shape(model)
    source = resolve_source(model, components)
    if source.kind == "diffusers":
        config = _json(source.transformer / "transformer" / "config.json")
    else:
        config = {**_single_file_config(source.transformer), **_json(source.components / "transformer" / "config.json")}
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    vae = _json(source.components / "vae" / "config.json") or _defaults(AutoencoderKLQwenImage)
    manifest = source.manifest or _json(source.components / MANIFEST)
    return ModelShape(manifest.get("name") or source.model_id, config, _vae_scale(vae), KREA2.patch_size,
                      int(manifest.get("max_sequence_length", KREA2.max_sequence_length)),
                      int(manifest.get("default_size", 1024)))


def _single_file_config(path) -> dict:
    """A single-file transformer's config from its safetensors header (shapes only), as loading infers it."""
    import torch
    from safetensors import safe_open

    from weightshop.models.keys import is_original_layout, original_to_diffusers
    from weightshop.models.loading import infer_transformer_config

    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if is_original_layout(shapes):
        meta = original_to_diffusers({k: torch.empty(s, device="meta") for k, s in shapes.items()})
        shapes = {k: tuple(v.shape) for k, v in meta.items()}
    return infer_transformer_config(shapes)


# ---------------------------------------------------------------------------------------------------
# Parameters, counted on the meta device


@dataclass(frozen=True)
class ParamCounts:
    """Parameter numbers of the transformer with its LoRA, read off a meta-device model."""

    total: int  # base parameters
    fp32_kept: int  # norms: diffusers keeps them in fp32 whatever the model dtype
    quantizable: int  # the blocks' Linear weights: what memory.base_dtype stores quantized
    quantizable_linears: int
    quantizable_out_channels: int
    largest_quantizable: int  # the biggest such weight (nf4 dequantizes one at a time)
    block_linear_weights: tuple[int, ...]  # per transformer block: its Linear weights' elements
    lora: int
    lora_modules: tuple[str, ...]


@functools.lru_cache(maxsize=32)
def _count(config_key: str, targets_key: str, rank: int, text_fusion: bool) -> ParamCounts:
    import torch
    from diffusers import Krea2Transformer2DModel
    from peft import LoraConfig

    from weightshop.train.targets import resolve_targets

    targets = json.loads(targets_key)
    with torch.device("meta"):
        model = Krea2Transformer2DModel.from_config(json.loads(config_key))
    keep = model._keep_in_fp32_modules or []
    total = sum(p.numel() for p in model.parameters())
    fp32_kept = sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in keep))
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    quant = [m for n, m in linears if n.startswith("transformer_blocks.")]
    per_block = tuple(sum(m.weight.numel() for n, m in linears if n.startswith(f"transformer_blocks.{i}."))
                      for i in range(len(model.transformer_blocks)))
    names = resolve_targets(model, targets, text_fusion)
    with torch.device("meta"):
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=names), adapter_name="plan")
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    modules = tuple(sorted({n.split(".lora_")[0] for n, _ in model.named_parameters() if "lora_" in n}))
    return ParamCounts(total, fp32_kept, sum(m.weight.numel() for m in quant), len(quant),
                       sum(m.out_features for m in quant), max((m.weight.numel() for m in quant), default=0),
                       per_block, lora, modules)


def count_parameters(shape: ModelShape, targets, rank: int, text_fusion: bool = True) -> ParamCounts:
    """Base and LoRA parameters of `shape` with peft's LoRA on `targets` (built on the meta device, no weights)."""
    return _count(shape.key(), json.dumps(targets), rank, text_fusion)


def quantized_bytes(params: int, linears: int, out_channels: int, base_dtype: str) -> int:
    """Bytes of Linear weights stored as fp8 (1 B + one fp32 scale per tensor), fp8-mm and int8 (1 B + one fp32
    scale per output channel) or nf4 (0.5 B + one fp32 absmax per block of 64)."""
    if base_dtype == "fp8":
        return params + 4 * linears
    if base_dtype in ("fp8-mm", "int8"):
        return params + 4 * out_channels
    if base_dtype == "nf4":
        return params // 2 + 4 * math.ceil(params / 64)
    raise WeightshopError(f"unknown memory.base_dtype {base_dtype!r}: expected {', '.join(BASE_DTYPES)}")


def base_weight_bytes(counts: ParamCounts, model_dtype: str, base_dtype: str = "none") -> int:
    width = DTYPE_BYTES[model_dtype]
    rest = counts.total - counts.fp32_kept
    if base_dtype == "none":
        return counts.fp32_kept * 4 + rest * width
    quant = quantized_bytes(counts.quantizable, counts.quantizable_linears, counts.quantizable_out_channels, base_dtype)
    return counts.fp32_kept * 4 + (rest - counts.quantizable) * width + quant


def dequantized_weight_bytes(counts: ParamCounts, base_dtype: str, checkpointing: bool, dt: "ActivationDtypes") -> int:
    """Compute-dtype copies of quantized weights alive at the peak.

    fp8 (`Float8Linear`) and int8 (torchao weight-only) upcast a Linear's weight for its forward, and
    the matmul keeps that copy for the backward: without checkpointing every block's weights come back in bf16 (the
    saving is gone at the peak), with it only the recomputed block's (measured on CPU: docs/memory.md). bitsandbytes
    nf4 keeps its packed state and dequantizes again in backward: one weight at a time, forward and backward.
    fp8-mm (`Float8MatmulLinear`) multiplies in float8 and upcasts only in backward, one weight at a time.
    """
    if base_dtype == "none":
        return 0
    if base_dtype == "nf4":
        return 2 * counts.largest_quantizable * dt.compute
    if base_dtype == "fp8-mm":
        return counts.largest_quantizable * dt.compute
    weights = max(counts.block_linear_weights) if checkpointing else sum(counts.block_linear_weights)
    return weights * dt.compute


# ---------------------------------------------------------------------------------------------------
# Activations


@dataclass(frozen=True)
class ActivationDtypes:
    """Bytes per element of each kind of saved tensor, from the model dtype and autocast.

    residual: the residual stream and elementwise results on it (model dtype; fp32 under autocast of an fp32 model).
    compute: matmul outputs (bf16 under autocast, else the model dtype).
    lora_input: what a LoRA A layer keeps of its input. peft casts the input to the LoRA dtype (fp32): without
      autocast an fp32 input is kept as is (`lora_input_shared`, once for all layers reading it), any other is
      copied to fp32 per layer; under autocast F.linear casts it to bf16 again, a bf16 copy per layer.
    weight_casts: autocast over an fp32 base casts every frozen Linear weight to bf16 per call and the matmul keeps
      the copy for backward (frozen weights are not in autocast's cache).
    """

    residual: int
    compute: int
    lora_input: int
    lora_input_shared: bool
    weight_casts: bool
    lora_output: int  # LoRA A outputs: bf16 under autocast, else fp32


def activation_dtypes(model_dtype: str, autocast: str = "none", base_dtype: str = "none") -> ActivationDtypes:
    width = DTYPE_BYTES[model_dtype]
    if autocast == "bf16":
        return ActivationDtypes(width, 2, 2, False, width == 4 and base_dtype == "none", 2)
    return ActivationDtypes(width, width, 4, width == 4, False, 4)


def lora_input_bytes(layers: int, width: int, source_bytes: int, dt: ActivationDtypes, dropout: bool = False) -> int:
    """Per token, what `layers` LoRA-adapted Linears reading the same input of `width` keep of it (see
    ActivationDtypes); with LoRA dropout each keeps its own dropped copy and a 1-byte mask."""
    if not layers:
        return 0
    if dropout:
        return layers * width * (dt.lora_input + 1)
    if dt.lora_input_shared and source_bytes == 4:
        return width * 4
    return layers * width * dt.lora_input


def block_activation_bytes(tokens: int, *, hidden: int, kv_dim: int, mlp: int, heads: int, kv_heads: int,
                           head_dim: int, rank: int, adapted: frozenset[str], dt: ActivationDtypes,
                           modulated: bool = True, modulation_grad: bool = True, rope: bool = True,
                           lora_dropout: bool = False) -> dict[str, int]:
    """Bytes autograd keeps for the backward of one block over `tokens` tokens (all batch rows), by term.

    A Krea2TransformerBlock (modulated, rope) or a Krea2TextFusionBlock (neither) with peft LoRA on the Linears named
    in `adapted` ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_gate", "attn.to_out.0", "ff.gate", "ff.up",
    "ff.down"). Widths: hidden h, kv_dim = kv_heads x head_dim, mlp f. dt gives each kind's bytes (R residual,
    C compute); fp32 is 4. Per token:

    - norm1 / norm2 input, fp32 (2 x 4h): RMSNorm upcasts its input and keeps the fp32 tensor (with an fp32
      residual this is the block input itself).
    - norm outputs before modulation (2 x Rh): `(1 + scale) * norm(x)` keeps norm(x) because the scale comes from
      the timestep path, which needs grads when time_embed/time_mod_proj carry LoRA (`modulation_grad`).
    - q and k before their RMSNorm, fp32 (4h + 4 kv_dim).
    - q, k, v into attention (3 Ch): the SDPA kernels (flash on CPU, memory-efficient on CUDA with Krea's mask)
      keep their inputs, with k and v already repeated to all heads (GQA 4:1 is expanded before SDPA), and no
      s x s matrix.
    - attention output and sigmoid(gate) (2 Ch): SDPA's output, and the gate's activation, kept by their product.
    - gated branches (2 Ch): `gate * attn_out` and `gate * ff_out`, kept when the gates need grads (as above).
    - MLP (3 Cf): silu's input, silu(gate) and up, kept by silu and by their product.
    - LoRA inputs: each adapted Linear's input, shared or copied per layer (`lora_input_bytes`); frozen Linears
      keep nothing of their input.
    - LoRA A outputs (rank each), and per-token statistics: norm rstds, q/k norm rstds per head, SDPA's
      logsumexp per head (fp32), and the rotary cos/sin tables (2 x head_dim fp32).
    """
    R, C = dt.residual, dt.compute
    gated = modulated and modulation_grad

    def lora_in(names: tuple[str, ...], width: int, source_bytes: int) -> int:
        return lora_input_bytes(len(adapted & set(names)), width, source_bytes, dt, lora_dropout)

    per_token = {
        "norm inputs (fp32)": 2 * hidden * 4,
        "norm outputs before modulation": 2 * hidden * R if gated else 0,
        "q, k before RMSNorm (fp32)": (hidden + kv_dim) * 4,
        "q, k, v into attention": 3 * hidden * C,
        "attention output, sigmoid(gate)": 2 * hidden * C,
        "gated attention and MLP branches": 2 * hidden * C if gated else 0,
        "MLP gate, silu(gate), up": 3 * mlp * C,
        "LoRA inputs": (lora_in(("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_gate"), hidden, R)
                        + lora_in(("attn.to_out.0",), hidden, C) + lora_in(("ff.gate", "ff.up"), hidden, R)
                        + lora_in(("ff.down",), mlp, C)),
        "LoRA A outputs": len(adapted) * rank * dt.lora_output,
        "per-token statistics": (2 + 2 * heads + kv_heads) * 4 + (2 * head_dim * 4 if rope else 0),
    }
    return {k: v * tokens for k, v in per_token.items()}


def backward_working_bytes(tokens: int, hidden: int, mlp: int) -> int:
    """Transients on top of the saved tensors at the peak: in one block's backward (or the last block's forward), the
    grad of the residual stream and one MLP-wide grad or temporary, taken as fp32 (4h + 4f per token). Calibrated:
    the measured excess over the saved tensors ran from -1.5 to +4.1 KB per token on krea2-nano (h 256, f 768, where
    this gives 4 KB) across dtypes, autocast and checkpointing (docs/memory.md)."""
    return tokens * (hidden + mlp) * 4


def _dims(config: dict) -> dict:
    head_dim = config["attention_head_dim"]
    text_head_dim = config["text_hidden_dim"] // config["text_num_attention_heads"]
    return {
        "main": dict(hidden=head_dim * config["num_attention_heads"], kv_dim=head_dim * config["num_key_value_heads"],
                     mlp=config["intermediate_size"], heads=config["num_attention_heads"],
                     kv_heads=config["num_key_value_heads"], head_dim=head_dim),
        "text": dict(hidden=config["text_hidden_dim"], kv_dim=text_head_dim * config["text_num_key_value_heads"],
                     mlp=config["text_intermediate_size"], heads=config["text_num_attention_heads"],
                     kv_heads=config["text_num_key_value_heads"], head_dim=text_head_dim),
    }


def activation_bytes(shape: ModelShape, counts: ParamCounts, *, batch: int, image_tokens: int, dt: ActivationDtypes,
                     checkpointing: bool, rank: int, lora_dropout: bool = False) -> dict[str, int]:
    """Saved and transient activations of one micro-batch at the start of backward, by part of the model.

    Without checkpointing every block keeps its `block_activation_bytes`; with it (diffusers checkpoints each
    transformer block, non-reentrant) a block keeps only its input, and backward recomputes one block at a time.
    The text fusion blocks are never checkpointed; they keep activations only if a LoRA sits in or before them.
    """
    c, dims = shape.config, _dims(shape.config)
    h, f, in_ch = dims["main"]["hidden"], dims["main"]["mlp"], c["in_channels"]
    th, layers, text_len = c["text_hidden_dim"], c["num_text_layers"], shape.max_sequence_length
    R, C = dt.residual, dt.compute
    tokens = batch * (text_len + image_tokens)
    img = batch * image_tokens
    adapted = set(counts.lora_modules)

    def inside(prefix: str) -> frozenset[str]:
        return frozenset(n[len(prefix):] for n in adapted if n.startswith(prefix))

    def lora_in(name: str, width: int, source_bytes: int) -> int:
        return lora_input_bytes(int(name in adapted), width, source_bytes, dt, lora_dropout)

    modulation_grad = any(n.startswith(("time_embed.", "time_mod_proj")) for n in adapted)
    common = dict(rank=rank, dt=dt, lora_dropout=lora_dropout)
    out = {"inputs (latents, noise, target, text embeddings)":
           batch * (image_tokens * in_ch * 6 * 4 + text_len * layers * th * (4 + R))}

    # Text fusion: layer-wise blocks over (batch x tokens) sequences of `layers`, the projector, refiner blocks.
    text = 0
    grad = False
    for i in range(c["num_layerwise_text_blocks"]):
        grad = grad or bool(inside(f"text_fusion.layerwise_blocks.{i}."))
        if grad:
            text += sum(block_activation_bytes(batch * text_len * layers, **dims["text"], adapted=inside(
                f"text_fusion.layerwise_blocks.{i}."), modulated=False, rope=False, **common).values())
    text += batch * text_len * lora_in("text_fusion.projector", th * layers, R)
    grad = grad or "text_fusion.projector" in adapted
    for i in range(c["num_refiner_text_blocks"]):
        grad = grad or bool(inside(f"text_fusion.refiner_blocks.{i}."))
        if grad:
            text += sum(block_activation_bytes(batch * text_len, **dims["text"], adapted=inside(
                f"text_fusion.refiner_blocks.{i}."), modulated=False, rope=False, **common).values())
    if grad or inside("txt_in."):
        text += batch * text_len * ((th * 4 if grad else 0) + h * C + lora_in("txt_in.linear_1", th, R)
                                    + lora_in("txt_in.linear_2", h, C))
    out["text fusion and projection"] = text

    blocks = [block_activation_bytes(tokens, **dims["main"], adapted=inside(f"transformer_blocks.{i}."),
                                     modulation_grad=modulation_grad, **common) for i in range(c["num_layers"])]
    if checkpointing:
        recompute = max(blocks, key=lambda b: sum(b.values()))
        shared_input = tokens * h * 4 if R == 4 else 0  # the recomputed block's fp32 norm1 input is its saved input
        out["block inputs (checkpointed)"] = c["num_layers"] * tokens * h * R
        out["one block recomputed in backward"] = sum(recompute.values()) - shared_input
    else:
        out["transformer blocks"] = sum(sum(b.values()) for b in blocks)
    head = tokens * h * 4 if R == 4 else img * h * 4  # final norm input (an fp32 residual keeps the whole sequence)
    head += img * ((h * R if modulation_grad else 0) + lora_in("final_layer.linear", h, R) + lora_in("img_in", in_ch, R)
                   + in_ch * (C + 3 * 4))
    out["image projection, final layer and loss"] = head
    out["working set of one block"] = backward_working_bytes(tokens, h, f)
    if dt.weight_casts:
        linears = sum(counts.block_linear_weights) if not checkpointing else max(counts.block_linear_weights)
        out["bf16 copies of frozen weights (autocast)"] = 2 * linears
    return out


# ---------------------------------------------------------------------------------------------------
# The prediction


@dataclass(frozen=True)
class RunSettings:
    """The fields of a run config that decide its memory."""

    model_dtype: str = "bf16"
    autocast: str = "none"
    base_dtype: str = "none"
    checkpointing: bool = False
    compile: bool = False
    rank: int = 32
    targets: str | tuple[str, ...] = "krea-default"
    text_fusion: bool = True
    lora_dropout: float = 0.0
    dora: bool = False
    batch_size: int = 1
    grad_accum: int = 1
    optimizer: str = "adamw"
    ema: bool = False

    @classmethod
    def from_config(cls, cfg) -> "RunSettings":
        targets = cfg.lora.targets if isinstance(cfg.lora.targets, str) else tuple(cfg.lora.targets)
        return cls(model_dtype=cfg.model.dtype, autocast=cfg.memory.autocast,
                   base_dtype=getattr(cfg.memory, "base_dtype", "none") or "none",
                   checkpointing=cfg.memory.gradient_checkpointing, compile=bool(getattr(cfg.memory, "compile", False)),
                   rank=cfg.lora.rank, targets=targets, text_fusion=cfg.lora.text_fusion, lora_dropout=cfg.lora.dropout,
                   dora=cfg.lora.dora, batch_size=cfg.schedule.batch_size, grad_accum=cfg.schedule.grad_accum,
                   optimizer=cfg.optim.name, ema=cfg.optim.ema is not None)

    def config_sets(self, other: "RunSettings") -> list[str]:
        """The `--set` overrides that turn this run into `other`."""
        keys = {"model_dtype": "model.dtype", "autocast": "memory.autocast", "base_dtype": "memory.base_dtype",
                "checkpointing": "memory.gradient_checkpointing", "rank": "lora.rank",
                "text_fusion": "lora.text_fusion", "batch_size": "schedule.batch_size",
                "grad_accum": "schedule.grad_accum", "optimizer": "optim.name"}
        out = []
        for name, key in keys.items():
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{key}={str(b).lower() if isinstance(b, bool) else b}")
        return out


@dataclass
class Suggestion:
    change: str
    sets: list[str]
    resolution: tuple[int, int]
    total: int
    fits: bool


@dataclass
class MemoryPlan:
    model: str
    height: int
    width: int
    settings: RunSettings
    image_tokens: int
    text_tokens: int
    parts: dict[str, int]  # what lives on the device at the peak, in bytes
    activation_terms: dict[str, int]
    base_parameters: int
    lora_parameters: int
    lora_modules: int
    gpu_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)

    @property
    def allocated(self) -> int:
        """Peak bytes of tensors (what torch.cuda.max_memory_allocated reports)."""
        return sum(v for k, v in self.parts.items() if k not in OVERHEAD_PARTS)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_bytes is None else self.total <= self.gpu_bytes

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "suggestions"}
        out.update(allocated=self.allocated, total=self.total, fits=self.fits,
                   total_gib=round(self.total / GiB, 2), gpu_gib=None if self.gpu_bytes is None else
                   round(self.gpu_bytes / GiB, 2), suggestions=[asdict(s) for s in self.suggestions])
        return out


def predict(settings: RunSettings, shape: ModelShape, height: int, width: int | None = None,
            gpu_bytes: int | None = None, counts: ParamCounts | None = None) -> MemoryPlan:
    """Peak training memory of one step of `settings` on `shape` at height x width. Pure given the parameter counts
    (counted on the meta device when not passed)."""
    from weightshop.models.spec import validate_size

    width = width or height
    validate_size(height, width, shape.vae_scale_factor * shape.patch_size)
    if settings.base_dtype not in BASE_DTYPES:
        raise WeightshopError(f"unknown memory.base_dtype {settings.base_dtype!r}: expected {', '.join(BASE_DTYPES)}")
    counts = counts or count_parameters(shape, settings.targets, settings.rank, settings.text_fusion)
    dt = activation_dtypes(settings.model_dtype, settings.autocast, settings.base_dtype)
    tokens = shape.image_tokens(height, width)
    acts = activation_bytes(shape, counts, batch=settings.batch_size, image_tokens=tokens, dt=dt,
                            checkpointing=settings.checkpointing, rank=settings.rank,
                            lora_dropout=settings.lora_dropout > 0)
    lora = counts.lora
    parts = {
        "base weights": base_weight_bytes(counts, settings.model_dtype, settings.base_dtype),
        "dequantized weights": dequantized_weight_bytes(counts, settings.base_dtype, settings.checkpointing, dt),
        "LoRA weights (fp32)": 4 * lora,
        "LoRA grads (fp32)": 4 * lora,
        "optimizer state": int(OPTIMIZER_BYTES[settings.optimizer] * lora),
        "EMA copy": 4 * lora if settings.ema else 0,
        "activations": sum(acts.values()),
    }
    allocated = sum(parts.values())
    parts[OVERHEAD_PARTS[0]] = CUDA_OVERHEAD
    parts[OVERHEAD_PARTS[1]] = int(FRAGMENTATION * allocated)
    notes = []
    if settings.dora:
        notes.append("DoRA is not modelled: it adds each adapted weight's norm computation (one weight matrix in fp32 "
                     "at a time) on top of this prediction")
    if settings.compile:
        notes.append("torch.compile is not modelled; peers report it raising the peak "
                     "(64 GiB vs 33 GiB, H100, 1024 px)")
    if settings.base_dtype != "none":
        notes.append(f"base {settings.base_dtype}: the blocks' Linear weights are stored quantized; embeddings, "
                     "text fusion and the final layer stay in the model dtype")
    if settings.base_dtype in ("fp8", "int8") and not settings.checkpointing:
        notes.append(f"without gradient checkpointing a {settings.base_dtype} base saves nothing at the peak: every "
                     "block's upcast weights are kept for backward")
    return MemoryPlan(shape.name, height, width, settings, tokens, shape.max_sequence_length, parts, acts,
                      counts.total, lora, len(counts.lora_modules), gpu_bytes, notes)


def suggest(plan: MemoryPlan, shape: ModelShape, gpu_bytes: int) -> list[Suggestion]:
    """Changes in order of what they cost the result (nothing first), each on top of the ones before and each
    re-predicted, until one fits. An "or ..." row is an alternative to the row above it, not a further step."""
    s, size = plan.settings, (plan.height, plan.width)
    steps: list[tuple[str, RunSettings, tuple[int, int], bool]] = []
    current = s

    def step(change: str, **changes) -> None:
        nonlocal current
        current = replace(current, **changes)
        steps.append((change, current, size, False))

    if current.model_dtype == "fp32":
        step("bf16 base weights (LoRA stays fp32)", model_dtype="bf16")
    if not current.checkpointing:
        step("gradient checkpointing (~30 % slower, same result)", checkpointing=True)
    if current.batch_size > 1:
        step(f"batch 1 x {current.grad_accum * current.batch_size} accumulation steps (same effective batch)",
             batch_size=1, grad_accum=current.grad_accum * current.batch_size)
    if current.base_dtype == "none":
        step("base fp8 (scaled, upcast per layer)", base_dtype="fp8")
        steps.append(("or base int8 (torchao), instead of fp8", replace(current, base_dtype="int8"), size, True))
    if current.base_dtype != "nf4":
        step("base nf4 (bitsandbytes, CUDA)", base_dtype="nf4")
    if current.text_fusion:
        step("no LoRA in the text fusion (its activations are never checkpointed)", text_fusion=False)
    multiple = shape.vae_scale_factor * shape.patch_size
    for side in (768, 512):
        if max(size) > side:
            size = tuple(max(multiple, x * side // max(size) // multiple * multiple) for x in size)
            step(f"train at {size[0]}x{size[1]}")
    while current.rank > 8:
        step(f"LoRA rank {current.rank // 2}", rank=current.rank // 2)
    out: list[Suggestion] = []
    for change, new, at, alternative in steps:
        if not alternative and any(t.fits for t in out):
            break
        total = predict(new, shape, *at, gpu_bytes).total
        out.append(Suggestion(change, s.config_sets(new), at, total, total <= gpu_bytes))
    return out


def plan(settings: RunSettings, shape: ModelShape, height: int, width: int | None = None,
         gpu_bytes: int | None = None) -> MemoryPlan:
    """`predict`, plus the suggestions when it does not fit."""
    result = predict(settings, shape, height, width, gpu_bytes)
    if gpu_bytes is not None and not result.fits:
        result.suggestions = suggest(result, shape, gpu_bytes)
    return result


# ---------------------------------------------------------------------------------------------------
# Measuring a real step (the check on the prediction; also for GPU benchmarks)


def measure_step_peak(step: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated while `step()` runs, above what was allocated when it started.

    CUDA: the caching allocator's own counter (torch.cuda.max_memory_allocated). CPU: torch has no allocator
    statistics, and RSS is blurred by glibc keeping freed pages, so the step runs under torch.profiler with
    profile_memory, which records every allocation and free of c10's CPU allocator with its size; summed in time
    order they give the exact live-bytes curve. Memory that bypasses c10 (oneDNN scratch) is not seen.
    """
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type().name == "CPU"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def tensor_bytes(*holders) -> int:
    """Bytes of the distinct storages held by modules, optimizers (their state) and dicts of tensors."""
    import torch

    seen: dict[int, int] = {}

    def visit(obj) -> None:
        if isinstance(obj, torch.Tensor) and hasattr(type(obj), "__tensor_flatten__"):  # torchao quantized weights
            for name in obj.__tensor_flatten__()[0]:
                visit(getattr(obj, name))
        elif isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, torch.nn.Module):
            for t in (*obj.parameters(), *obj.buffers()):
                visit(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                visit(state)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    for holder in holders:
        visit(holder)
    return sum(seen.values())


def measure_training_step(shape: ModelShape, settings: RunSettings, height: int, width: int | None = None,
                          device: str = "cpu", seed: int = 0) -> dict:
    """Build `shape` with random weights, set LoRA up as the trainer does, run the trainer's own loss, backward,
    clipping and optimizer step, and measure a steady-state step (after one warm-up step): `static` is what lives
    between steps (weights, LoRA, optimizer state, EMA), `step_peak` the most the step adds on top.

    Reusable on a GPU (device="cuda"); tests run it on CPU."""
    from weightshop.train.synthetic import trainer_step

    step = trainer_step(shape.config, settings, height, width, device=device, vae_scale=shape.vae_scale_factor,
                        text_tokens=shape.max_sequence_length, seed=seed)
    step()  # warm-up: the optimizer allocates its state
    step.optimizer.zero_grad(set_to_none=True)
    static = tensor_bytes(step.model, step.optimizer, step.ema or {})
    peak = measure_step_peak(step, device)
    return {"static": static, "step_peak": peak, "total": static + peak, "modules": len(step.names)}


def calibrate(shape: ModelShape, cases: list[tuple[int, RunSettings]], device: str = "cpu") -> list[dict]:
    """Measured against predicted, per (resolution, settings): the rows of docs/memory.md's calibration table."""
    rows = []
    for size, settings in cases:
        measured = measure_training_step(shape, settings, size, device=device)
        predicted = predict(settings, shape, size)
        static = sum(predicted.parts[k] for k in ("base weights", "LoRA weights (fp32)", "optimizer state", "EMA copy"))
        rows.append({"resolution": size, "settings": settings, "measured_static": measured["static"],
                     "predicted_static": static, "measured_step": measured["step_peak"],
                     "predicted_step": predicted.allocated - static, "measured_total": measured["total"],
                     "predicted_total": predicted.allocated})
    return rows
