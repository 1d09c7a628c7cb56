"""Predict the peak device memory of one generation, stage by stage, and measure the real one.

A generation has three stages, and its peak is the largest of them:

  encode    the text encoder (Qwen3-VL) over max_sequence_length + 34 template tokens per prompt, keeping every
            layer's hidden states (the pipeline asks for all of them and stacks the tapped ones)
  denoise   one transformer forward at a time: the per-block working set over batch x (text + image) tokens, or
            the text fusion's over batch x text x taps, whichever is larger; plus a quantized format's dequantized
            weight. Guided sampling (Raw) in weightshop's own loop (offload none) runs both branches as one
            forward over 2 x batch; the stock call under offload hooks runs them one after the other
  decode    the Qwen-Image VAE: every causal convolution keeps a copy of its input (its frame cache) until the
            decode ends, and the largest stage's working set sits on top; tiling decodes 256 px tiles instead

What is resident in each stage depends on the placement (`models.placement`): with no offload every model is on
the device throughout; model offload holds only the stage's model; group offload holds the transformer's non-block
weights and one group of blocks during denoising; sequential offload one layer at a time. The text encoder mode
decides whether the text encoder stays for the later stages. Weights come from `models.memory` (the same counting
training's plan uses) and a quantized format's size from `quant.formats.stored_bytes`; only the 28 blocks' Linears
are quantized.

Working sets are read off diffusers 0.42.1's code (Krea2TransformerBlock, apply_rotary_emb,
AutoencoderKLQwenImage's decoder) term by term below, and checked against measured peaks on krea2-nano on CPU
(tests/generate/test_memory.py, docs/memory.md).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field

from weightshop.errors import WeightshopError
from weightshop.models.memory import (CUDA_OVERHEAD, DTYPE_BYTES, FRAGMENTATION, OVERHEAD_PARTS, GiB, WeightCounts,
                                      stored_weight_bytes, weight_counts)
from weightshop.models.placement import GROUP_LEVELS, OFFLOAD_MODES, TEXT_ENCODER_MODES, Placement, check_choice
from weightshop.models.shape import ModelShape

TEMPLATE_PREFIX_TOKENS = 34  # Krea2Pipeline's system prefix, encoded then dropped (KREA2.md)
VAE_TILE = 256  # AutoencoderKLQwenImage's tile_sample_min: a tiled decode works on 256 px tiles ...
VAE_TILE_STRIDE = 192  # ... placed every 192 px
# Compute-dtype copies of one weight alive while a quantized Linear runs: fp8 / int8 upcast the weight, then
# multiply by the scale (two copies at once); GGUF types dequantize through fp16 blocks and cast (a third for
# the 4-bit unpacking); bitsandbytes nf4 dequantizes into one buffer; fp8-mm multiplies in float8 and int8-mm in
# int8 (no weight copy: one bounds the activations' quantized copy and the int32 product).
DEQUANT_COPIES = {"fp8": 2, "fp8-channel": 2, "fp8-scaled": 2, "int8": 2, "q8_0": 2, "q4_0": 3, "q4_k": 3,
                  "nf4": 1, "fp8-mm": 1, "int8-mm": 1}
WEIGHT_FORMATS = ("bf16", *DEQUANT_COPIES)
# The goal of issue 20 at full size, 1024 x 1024 Turbo: peak GiB by weight bits.
GOALS_GIB = {"8-bit": 16.0, "4-bit": 10.0}
FOUR_BIT = ("q4_0", "q4_k", "nf4")
STAGES = ("encode", "denoise", "decode")


@dataclass(frozen=True)
class InferenceShape:
    """Everything a generation's memory depends on in the model: transformer, text encoder and VAE configs."""

    transformer: ModelShape
    text_encoder: dict  # Qwen3VLConfig as a dict (text_config, vision_config)
    vae: dict  # AutoencoderKLQwenImage's config

    @property
    def name(self) -> str:
        return self.transformer.name


def full_size_inference_shape() -> InferenceShape:
    from weightshop.models.shape import full_size_component_configs, full_size_shape

    return InferenceShape(full_size_shape(), *full_size_component_configs())


def model_inference_shape(model: str, components: str | None = None) -> InferenceShape:
    """The shape of a model as a user names it (directory, single file, built-in name such as krea2-nano)."""
    from weightshop.models.loading import resolve_source
    from weightshop.models.shape import source_component_configs, source_shape

    source = resolve_source(model, components)
    return InferenceShape(source_shape(source), *source_component_configs(source))


@functools.lru_cache(maxsize=16)
def _component_params(kind: str, config_key: str) -> tuple[int, int]:
    """(parameters, largest single weight) of the text encoder or VAE built on the meta device."""
    import torch

    config = json.loads(config_key)
    with torch.device("meta"):
        if kind == "text_encoder":
            from transformers import Qwen3VLConfig, Qwen3VLModel

            model = Qwen3VLModel(Qwen3VLConfig(**{k: v for k, v in config.items() if k in (
                "text_config", "vision_config")}))
        else:
            from diffusers import AutoencoderKLQwenImage

            from weightshop.models.shape import class_defaults

            known = class_defaults(AutoencoderKLQwenImage)
            model = AutoencoderKLQwenImage(**{k: v for k, v in config.items() if k in known})
    params = list(model.parameters())
    return sum(p.numel() for p in params), max(p.numel() for p in params)


def component_params(kind: str, config: dict) -> tuple[int, int]:
    return _component_params(kind, json.dumps(config, sort_keys=True, default=list))


# ---------------------------------------------------------------------------------------------------
# Working sets (pure functions of sizes; bytes)


def _fp32_copy(width: int) -> int:
    """Bytes per element of an fp32 upcast: none when the tensor already is fp32."""
    return 0 if width == 4 else 4


def block_working_bytes(tokens: int, *, hidden: int, kv_dim: int, mlp: int, width: int, rope: bool = True) -> dict:
    """Bytes alive inside one transformer block (or text fusion block without rope) over `tokens` tokens, by phase,
    on top of nothing else (the caller holds the block input). Read off diffusers 0.42.1, no_grad:

    - rotary: the residual x, the modulated input m, the gate, q, k, v (kv width), then apply_rotary_emb on q
      builds the rotated copy (width h) and keeps x.float() * cos, (rotated).float() and its product with sin in
      fp32 (3 x 4h; the middle one is no copy for fp32 models).
    - attention: x, m, gate, q and k, v repeated to all heads, and SDPA's output: 7 h-wide tensors (the kernels
      with Krea's key-padding mask keep no s x s matrix).
    - MLP: x and the modulated input, then silu(gate) and up and their product: 2 h + 3 f.
    - norm: x, its fp32 copy and the fp32 rms_norm output.
    """
    w, up = width, _fp32_copy(width)
    phases = {
        "attention": 7 * hidden * w,
        "MLP": 2 * hidden * w + 3 * mlp * w,
        "norm": hidden * w + (up + 4) * hidden,
    }
    if rope:
        phases["rotary"] = 5 * hidden * w + 2 * kv_dim * w + (8 + up) * hidden
    return {k: v * tokens for k, v in phases.items()}


def transformer_working_bytes(shape: ModelShape, batch: int, image_tokens: int, width: int,
                              dequant: int = 0) -> dict[str, int]:
    """Activations of one transformer forward at its peak, by part: the larger of the text fusion phase and the
    blocks phase, plus the rotary tables, the pipeline's latents and one dequantized weight (`dequant` bytes)."""
    c = shape.config
    head = c["attention_head_dim"]
    h, kv, f = head * c["num_attention_heads"], head * c["num_key_value_heads"], c["intermediate_size"]
    th, layers, text = c["text_hidden_dim"], c["num_text_layers"], shape.max_sequence_length
    t_head = th // c["text_num_attention_heads"]
    tokens = batch * (text + image_tokens)
    fusion_in = batch * text * layers * th * width  # the tapped hidden states (the pipeline holds them)
    fusion = max(block_working_bytes(batch * text * layers, hidden=th, kv_dim=t_head * c["text_num_key_value_heads"],
                                     mlp=c["text_intermediate_size"], width=width, rope=False).values())
    blocks = max(block_working_bytes(tokens, hidden=h, kv_dim=kv, mlp=f, width=width).values())
    blocks_phase = blocks + tokens * h * width  # the block's input, held by the loop while the block runs
    parts = {
        "prompt embeddings (pipeline)": fusion_in,
        "text fusion or blocks working set": max(fusion, blocks_phase),
        "rotary tables (fp32)": 2 * (text + image_tokens) * head * 4,
        "latents, noise prediction": 4 * batch * image_tokens * c["in_channels"] * width,
        "dequantized weight": dequant,
    }
    return parts


def text_encoder_working_bytes(config: dict, prompts: int, text_tokens: int, taps: int, width: int) -> dict:
    """Activations of the text encoder at its peak: every layer's hidden states (output_hidden_states keeps all
    layers + the embeddings), the stacked taps, and one layer's MLP (gate, up, product) and residual/norm."""
    t = config["text_config"]
    hidden, inter, depth = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    seq = prompts * (text_tokens + TEMPLATE_PREFIX_TOKENS)
    return {"hidden states of every layer": seq * hidden * width * (depth + 1),
            "stacked taps": seq * hidden * width * taps,
            "one layer's working set": seq * (3 * inter * width + 2 * hidden * (width + 4))}


def _decoder_stages(vae: dict):
    """(name, channels in, channels out, resolution divisor, upsample after) of the decoder's resblock groups."""
    base, mult = vae["base_dim"], list(vae["dim_mult"])
    dims = [base * m for m in [mult[-1]] + mult[::-1]]
    scale = 2 ** (len(mult) - 1)
    yield "mid", dims[0], dims[0], scale, 2, False  # mid block: two resblocks
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin if i == 0 else cin // 2
        up = i != len(mult) - 1
        yield f"up {i}", cin, cout, scale, vae["num_res_blocks"] + 1, up
        if up:
            scale //= 2


def vae_decode_bytes(vae: dict, height: int, width: int, batch: int, dtype_width: int) -> dict[str, int]:
    """Peak of one untiled decode of `batch` images at height x width, by part.

    The causal convolutions' frame cache: each resblock keeps a copy of both its convolutions' inputs (channels in
    and out), conv_in its latent input and conv_out its input, all alive to the end of the decode. On top, the
    largest stage's working set:
    - a resblock holds its input (and the 1x1 shortcut's output when channels change); its second RMS_norm runs
      while the first convolution's output and input copy are alive. RMS_norm keeps F.normalize's output and two
      scaled copies (3 tensors; bf16 models: the fp32 upcast and fp32 output, 8 bytes per element, dominate).
    - an upsample holds its input, the nearest-upsampled tensor (upsampled in fp32, then cast back) and the
      following convolution's output (half the channels).
    """
    w, up32 = dtype_width, _fp32_copy(dtype_width)
    norm = max(up32 + 4, 3 * w)  # bytes per element of RMS_norm's transients
    px = batch * height * width
    scale_total = 2 ** (len(vae["dim_mult"]) - 1)
    cache = vae["z_dim"] * px // scale_total ** 2 * w
    peak = 0
    for _name, cin, cout, scale, resblocks, upsample in _decoder_stages(vae):
        p = px // scale ** 2
        for r in range(resblocks):
            c_in = cin if r == 0 else cout
            held = c_in * w + (cout * w if c_in != cout else 0)
            first = held + norm * c_in
            second = held + c_in * w + cout * w + norm * cout
            peak = max(peak, cache + first * p, cache + second * p)
            cache += (c_in + cout) * p * w
        if upsample:
            work = cout * w + max((4 + (w if up32 else 0)) * 4 * cout, w * 4 * cout + w * 2 * cout)
            peak = max(peak, cache + work * p)
    last = vae["base_dim"] * vae["dim_mult"][0]
    out = px * (3 * w * 2 + last * w)  # conv_out's input copy, the output and its clamp
    return {"frame cache and largest stage": max(peak, cache), "output": out}


def vae_tiled_bytes(vae: dict, height: int, width: int, batch: int, dtype_width: int, scale_factor: int) -> dict:
    """A tiled decode: one 256 px tile's untiled peak, plus every decoded tile kept for blending and the result."""
    tile_latent = VAE_TILE // scale_factor
    if height // scale_factor <= tile_latent and width // scale_factor <= tile_latent:
        return vae_decode_bytes(vae, height, width, batch, dtype_width)
    tile = vae_decode_bytes(vae, min(height, VAE_TILE), min(width, VAE_TILE), batch, dtype_width)
    tiles = math.ceil(height / VAE_TILE_STRIDE) * math.ceil(width / VAE_TILE_STRIDE)
    return {"one tile": sum(tile.values()),
            "decoded tiles and result": batch * 3 * dtype_width * (tiles * VAE_TILE ** 2 + 2 * height * width)}


# ---------------------------------------------------------------------------------------------------
# The prediction


@dataclass
class InferencePlan:
    model: str
    height: int
    width: int
    settings: dict
    weights: dict[str, int]  # bytes of each model as stored
    stages: dict[str, dict[str, int]]  # what lives on the device at each stage's peak, by part
    notes: list[str] = field(default_factory=list)

    @property
    def stage_totals(self) -> dict[str, int]:
        return {k: sum(v.values()) for k, v in self.stages.items()}

    @property
    def peak_stage(self) -> str:
        totals = self.stage_totals
        return max(totals, key=totals.get)

    @property
    def allocated(self) -> int:
        """Peak bytes of tensors (what torch.cuda.max_memory_allocated reports)."""
        return max(self.stage_totals.values())

    @property
    def overhead(self) -> dict[str, int]:
        return {OVERHEAD_PARTS[0]: CUDA_OVERHEAD, OVERHEAD_PARTS[1]: int(FRAGMENTATION * self.allocated)}

    @property
    def total(self) -> int:
        return self.allocated + sum(self.overhead.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "stage_totals": self.stage_totals, "peak_stage": self.peak_stage,
                "allocated": self.allocated, "overhead": self.overhead, "total": self.total,
                "total_gib": round(self.total / GiB, 2)}


def _format_width(fmt: str) -> None:
    check_choice("weight format", fmt, WEIGHT_FORMATS)


def predict_inference(shape: InferenceShape, *, fmt: str = "bf16", height: int = 1024, width: int | None = None,
                      batch: int = 1, prompts: int | None = None, placement: Placement = Placement(),
                      dtype: str = "bf16", counts: WeightCounts | None = None, guided: bool = False) -> InferencePlan:
    """Peak device memory of one generation of `batch` images at height x width with the transformer's blocks in
    weight format `fmt` (bf16 or a quantized format), the rest in `dtype`, placed as `placement`. `prompts`: how
    many prompts the text encoder encodes at once (default `batch`); `guided`: classifier-free guidance (Raw's
    preset), which adds the negative prompt to the encoding and, with offload none, where weightshop's loop batches
    the two branches, doubles the transformer's batch."""
    from weightshop.models.spec import validate_size

    width = width or height
    _format_width(fmt)
    check_choice("model dtype", dtype, tuple(DTYPE_BYTES))
    t = shape.transformer
    validate_size(height, width, t.size_multiple)
    if batch < 1:
        raise WeightshopError(f"batch must be >= 1, got {batch}")
    w = DTYPE_BYTES[dtype]
    counts = counts or weight_counts(t.config)
    quant = None if fmt == "bf16" else fmt
    transformer = stored_weight_bytes(counts, dtype, quant or "none")
    te_params, _ = component_params("text_encoder", shape.text_encoder)
    vae_params, vae_largest = component_params("vae", shape.vae)
    text_encoder, vae = te_params * w, vae_params * w
    blocks = sum(counts.block_params)
    block_share = [p / blocks for p in counts.block_params]
    quant_blocks = transformer - stored_weight_bytes(counts, dtype, "none") + blocks * w  # blocks as stored
    non_block = transformer - quant_blocks
    group = int(quant_blocks * sum(sorted(block_share)[-placement.blocks_per_group:]))
    largest_linear = counts.largest_quantizable * (w if quant is None else 1)
    dequant = DEQUANT_COPIES.get(quant, 0) * counts.largest_quantizable * w if quant else 0

    tokens = t.image_tokens(height, width)
    scale = t.vae_scale_factor
    te_work = text_encoder_working_bytes(shape.text_encoder, (prompts or batch) + guided, t.max_sequence_length,
                                         t.config["num_text_layers"], w)
    forward_batch = 2 * batch if guided and placement.offload == "none" else batch  # `generate.fast.sample`
    tr_work = transformer_working_bytes(t, forward_batch, tokens, w, dequant)
    decode_batch = 1 if placement.vae_slicing else batch
    if placement.vae_tiling:
        vae_work = vae_tiled_bytes(shape.vae, height, width, decode_batch, w, scale)
    else:
        vae_work = vae_decode_bytes(shape.vae, height, width, decode_batch, w)
    latents = batch * t.config["in_channels"] * tokens * w  # the final latents, unpacked for the VAE
    vae_work = {**vae_work, "latents": latents}

    keep = placement.text_encoder == "keep"
    off = placement.offload
    resident: dict[str, dict[str, int]]
    if off == "none":
        resident = {"encode": {"transformer": transformer, "text encoder": text_encoder, "VAE": vae},
                    "denoise": {"transformer": transformer, "text encoder": text_encoder if keep else 0, "VAE": vae},
                    "decode": {"transformer": transformer, "text encoder": text_encoder if keep else 0, "VAE": vae}}
    elif off == "model":
        resident = {"encode": {"text encoder": text_encoder}, "denoise": {"transformer": transformer},
                    "decode": {"VAE": vae}}
    elif off == "group":
        streamed = group if placement.group_level == "block" else largest_linear
        resident = {"encode": {"text encoder": text_encoder, "VAE": vae},
                    "denoise": {"transformer (non-block weights)": non_block,
                                "transformer (blocks on the device)": streamed,
                                "text encoder": text_encoder if keep else 0, "VAE": vae},
                    "decode": {"text encoder": text_encoder if keep else 0, "VAE": vae}}
    else:  # sequential: one leaf at a time
        resident = {"encode": {"text encoder": text_encoder}, "denoise": {"transformer (one layer)": largest_linear},
                    "decode": {"VAE (one layer)": vae_largest * w}}
    stages = {
        "encode": {**resident["encode"], **{f"text encoder: {k}": v for k, v in te_work.items()}},
        "denoise": {**resident["denoise"], **{f"transformer: {k}": v for k, v in tr_work.items()}},
        "decode": {**resident["decode"], **{f"VAE: {k}": v for k, v in vae_work.items()}},
    }
    stages = {s: {k: v for k, v in parts.items() if v} for s, parts in stages.items()}
    notes = []
    if off == "none" and not keep:
        notes.append("with no offload every model is on the device while the prompts are encoded: the text "
                     f"encoder mode {placement.text_encoder} lowers only the later stages")
    if off == "sequential":
        notes.append("sequential offload moves every weight for every step: expect it to be many times slower")
    settings = {"format": fmt, "dtype": dtype, "batch": batch, "prompts": prompts or batch, "guided": guided,
                "forward_batch": forward_batch, **placement.to_dict(),
                "image_tokens": tokens, "text_tokens": t.max_sequence_length}
    weights = {"transformer": transformer, "text encoder": text_encoder, "VAE": vae}
    return InferencePlan(shape.name, height, width, settings, weights, stages, notes)


def mode_grid(shape: InferenceShape, formats: tuple[str, ...], height: int = 1024, **kwargs) -> list[dict]:
    """Predicted total per (format, offload, text encoder mode, tiling): the table of docs/memory.md, and what
    `weightshop plan --inference --modes` prints, with whether each meets issue 20's goal."""
    rows = []
    for fmt in formats:
        goal = goal_gib(fmt)
        for offload in OFFLOAD_MODES:
            for te in TEXT_ENCODER_MODES:
                if te == "offload":
                    continue  # same device peak as release (the two differ in host memory only)
                for tiling in (False, True):
                    p = predict_inference(shape, fmt=fmt, height=height, placement=Placement(
                        offload, "block", 1, tiling, False, te), **kwargs)
                    rows.append({"format": fmt, "offload": offload, "text_encoder": te, "vae_tiling": tiling,
                                 "total": p.total, "peak_stage": p.peak_stage, "goal_gib": goal,
                                 "meets_goal": None if goal is None else p.total <= goal * GiB})
    return rows


def goal_gib(fmt: str) -> float | None:
    """Issue 20's full-size goal for a format: 16 GiB for 8-bit formats, 10 GiB for 4-bit ones, none for bf16."""
    if fmt == "bf16":
        return None
    return GOALS_GIB["4-bit"] if fmt in FOUR_BIT else GOALS_GIB["8-bit"]


def generation_compute(config: dict, model: str | None, settings: dict, gpu: str | None) -> dict:
    """The FLOPs of the planned generation (models.flops.generation_flops: the plan's image and text tokens, its
    batch and guidance, the checkpoint preset's steps) and, when --gpu names a card whose peak is known, the
    FLOP-limited lower bound per image: bf16, and fp8 too for the fp8-mm format (float8 matmuls)."""
    from weightshop.models.flops import TERA, card_peaks, generation_flops, lower_bound_s

    s = settings
    checkpoint, preset = checkpoint_preset(model, s["guided"])
    work = generation_flops(config, s["image_tokens"], s["text_tokens"], preset.steps, s["guided"], batch=s["batch"])
    peaks = card_peaks(gpu, fp8=s["format"] == "fp8-mm")
    return {"checkpoint": checkpoint, "sampling_steps": preset.steps, "generation_flops": work,
            "tflop_per_generation": work / TERA, "peak_tflops": peaks,
            "flop_lower_bound_s_per_image": lower_bound_s(work / s["batch"], peaks)}


def checkpoint_preset(model: str | None, guided: bool = False):
    """(checkpoint name, its sampler preset) of a named model; for full size Raw's when the plan is guided (Raw's
    preset is the guided one), else Turbo's (the plan's default)."""
    from weightshop.models.spec import KREA2

    if model is None:
        name = "raw" if guided else "turbo"
        return name, KREA2.checkpoint(name).preset
    from weightshop.models.loading import resolve_source

    source = resolve_source(model)
    return source.checkpoint, source.family.checkpoint(source.checkpoint).preset



# ---------------------------------------------------------------------------------------------------
# Measurement


def measure_generation(model, request, device: str | None = None) -> dict:
    """The real peak of `generate(model, request)`: on CUDA the allocator's max_memory_allocated over the call
    (resident weights included); on CPU the weights held by the pipeline's models (`tensor_bytes`) plus the peak
    the call adds, from the profiler's allocation events (`models.memory.measure_peak`). On CPU every placement
    keeps its weights in host memory, so only the none-placement numbers are comparable with a device's."""
    import torch

    from weightshop.generate.run import generate
    from weightshop.models.memory import measure_peak, tensor_bytes

    pipe = model.pipeline
    device = device or str(pipe._execution_device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        added = measure_peak(lambda: generate(model, request), device)
        return {"start": start, "added": added, "peak": start + added}
    modules = [m for m in (pipe.transformer, pipe.text_encoder, pipe.vae) if m is not None]
    start = tensor_bytes(*modules)
    added = measure_peak(lambda: generate(model, request), device)
    return {"start": start, "added": added, "peak": start + added}


__all__ = ["block_working_bytes", "checkpoint_preset", "component_params", "DEQUANT_COPIES", "full_size_inference_shape",
           "generation_compute", "goal_gib", "GOALS_GIB", "GROUP_LEVELS", "InferencePlan", "InferenceShape",
           "measure_generation", "measure_stages", "mode_grid", "model_inference_shape", "predict_inference",
           "STAGES", "text_encoder_working_bytes", "transformer_working_bytes", "vae_decode_bytes",
           "vae_tiled_bytes", "WEIGHT_FORMATS"]


def measure_stages(model, request, device: str | None = None) -> dict:
    """The peak each stage adds on top of what was allocated before it, measured separately (the check on each
    stage's working set): encode (the prompts, without grad, as `generate` runs it), denoise (the pipeline down
    to latents) and decode (the VAE). Plus `start`: the pipeline's weights (CPU) or the allocated bytes (CUDA)."""
    import torch

    from weightshop.generate.run import encode, plan
    from weightshop.generate.text import PromptCache
    from weightshop.models.memory import measure_peak, tensor_bytes

    pipe = model.pipeline
    p = plan(model, request)
    device = device or str(pipe._execution_device)
    if torch.device(device).type == "cuda":
        start = torch.cuda.memory_allocated(device)
    else:
        start = tensor_bytes(*[m for m in (pipe.transformer, pipe.text_encoder, pipe.vae) if m is not None])
    cache = PromptCache(pipe, p.max_sequence_length, "measure")
    prompts = [prompt for prompt, _ in p.jobs[:request.batch_size]]
    out = {"start": start, "encode": measure_peak(lambda: encode(cache, list(dict.fromkeys(prompts)), "keep"),
                                                  device)}
    embeds, mask = cache.get(prompts)
    latents = {}

    def denoise():
        latents["x"] = pipe(prompt_embeds=embeds.to(device), prompt_embeds_mask=mask.to(device), height=p.height,
                            width=p.width, num_inference_steps=p.preset.steps, guidance_scale=0,
                            max_sequence_length=p.max_sequence_length, output_type="latent").images

    out["denoise"] = measure_peak(denoise, device)
    unpacked = pipe._unpack_latents(latents["x"], p.height, p.width).to(pipe.vae.dtype)
    out["decode"] = measure_peak(torch.no_grad()(lambda: pipe.vae.decode(unpacked, return_dict=False)), device)
    return out
