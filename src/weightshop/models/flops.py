"""The FLOP model of the Krea 2 transformer, computed from its config: the one source of truth for MFU.

`weightshop bench generate` (inference MFU, the FLOP limit of a preset) and `weightshop bench train` (training MFU)
both count with it. Counted: every matrix multiply, at 2 FLOPs per multiply-add, as the forward really runs them:

- padded text tokens are computed like real ones (a masked key still costs its dot product), so the text length
  passed is what the transformer receives: max_sequence_length when padded, the prompt's own length when trimmed;
- attention is dense (QK^T and PV: 4 x queries x keys x query width), grouped-query heads share keys but not math;
- the text fusion's layer-wise blocks attend across the tapped layers of each token (sequences of num_text_layers).

Not counted: norms, RoPE, softmax, gates, SiLU and the modulation arithmetic (elementwise, under 0.5 % at full size).

At 1024 x 1024 (4096 image tokens) full-size Krea 2 needs 128.9 TFLOP per forward with 512 padded text tokens and
about 113 with the padding trimmed (PEERS.md: 113-129).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

TERA = 1e12
# Dense peak TFLOP/s (no sparsity) by GPU name fragment: (bf16, fp8). The datasheets' figures; MFU divides by them.
# The first fragment found in the device's name wins: the PCIe and NVL H100s come before the SXM one.
PEAK_TFLOPS = {"H200": (989.0, 1979.0), "H100 PCIe": (756.0, 1513.0), "H100 NVL": (835.0, 1671.0),
               "H100": (989.0, 1979.0), "A100": (312.0, None), "L40S": (362.0, 733.0),
               "4090": (165.2, 330.3), "5090": (209.5, 419.0), "3090": (71.0, None), "A6000": (154.8, None)}


def linear(tokens: int, n_in: int, n_out: int) -> float:
    """One Linear over `tokens` rows: a multiply-add per weight per row."""
    return 2.0 * tokens * n_in * n_out


def attention(sequences: int, queries: int, keys: int, width: int) -> float:
    """Dense attention scores (QK^T) and weighted values (PV), `width` = heads x head_dim of the queries."""
    return 4.0 * sequences * queries * keys * width


def block_linears(tokens: int, hidden: int, kv_width: int, intermediate: int) -> float:
    """A Krea 2 block's (or text fusion block's) Linears: q, k, v, the output gate, out, and the SwiGLU MLP."""
    attn = linear(tokens, hidden, hidden) * 3 + linear(tokens, hidden, kv_width) * 2  # q, gate, out; k, v
    return attn + linear(tokens, hidden, intermediate) * 2 + linear(tokens, intermediate, hidden)


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one transformer forward over a batch, by part."""

    blocks: float  # the transformer blocks' Linears
    attention: float  # the transformer blocks' attention math
    text: float  # text fusion (layer-wise + refiner blocks, projector) and txt_in: the same at every step
    other: float  # timestep embedding and modulation, img_in, the final layer

    @property
    def total(self) -> float:
        return self.blocks + self.attention + self.text + self.other

    @property
    def per_step(self) -> float:
        """What a step must compute when the text features are computed once per generation, not per step."""
        return self.blocks + self.attention + self.other

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def forward_flops(config: dict, image_tokens: int, text_tokens: int, batch: int = 1) -> ForwardFlops:
    """One forward of a Krea2Transformer2DModel with this config over `batch` samples of `image_tokens` image tokens
    and `text_tokens` text tokens (as the transformer receives them: padded or trimmed)."""
    c = config  # a full config: `models.shape` gives one for any model, full size included
    hidden = c["attention_head_dim"] * c["num_attention_heads"]
    kv = c["attention_head_dim"] * c["num_key_value_heads"]
    seq = text_tokens + image_tokens
    blocks = c["num_layers"] * block_linears(batch * seq, hidden, kv, c["intermediate_size"])
    attn = c["num_layers"] * attention(batch, seq, seq, hidden)

    text_dim, layers = c["text_hidden_dim"], c["num_text_layers"]
    text_kv = text_dim // c["text_num_attention_heads"] * c["text_num_key_value_heads"]
    tokens = batch * text_tokens
    layerwise = c["num_layerwise_text_blocks"] * (
        block_linears(tokens * layers, text_dim, text_kv, c["text_intermediate_size"])
        + attention(tokens, layers, layers, text_dim))
    refiner = c["num_refiner_text_blocks"] * (
        block_linears(tokens, text_dim, text_kv, c["text_intermediate_size"])
        + attention(batch, text_tokens, text_tokens, text_dim))
    text = layerwise + linear(tokens * text_dim, layers, 1) + refiner + linear(tokens, text_dim, hidden) \
        + linear(tokens, hidden, hidden)

    time = linear(batch, c["timestep_embed_dim"], hidden) + linear(batch, hidden, hidden) \
        + linear(batch, hidden, 6 * hidden)
    other = time + linear(batch * image_tokens, c["in_channels"], hidden) \
        + linear(batch * image_tokens, hidden, c["in_channels"])
    return ForwardFlops(blocks, attn, text, other)


def generation_flops(config: dict, image_tokens: int, text_tokens: int, steps: int, guided: bool,
                     batch: int = 1, negative_tokens: int | None = None) -> float:
    """A whole sampling run as diffusers runs it: one forward per step, two when guided (the negative prompt's
    forward over `negative_tokens`, the same length as the prompt's when padded)."""
    total = forward_flops(config, image_tokens, text_tokens, batch).total
    if guided:
        neg = text_tokens if negative_tokens is None else negative_tokens
        total += forward_flops(config, image_tokens, neg, batch).total
    return steps * total


def training_step_flops(config: dict, image_tokens: int, text_tokens: int, batch: int = 1,
                        checkpointing: bool = True) -> float:
    """A LoRA training step on a frozen base: the forward, the backward's input gradients (the same multiplies as
    the forward; frozen weights get no gradient, the LoRA's are negligible), and the forward again per block under
    gradient checkpointing."""
    return (3.0 if checkpointing else 2.0) * forward_flops(config, image_tokens, text_tokens, batch).total


def peak_tflops(device_name: str, fp8: bool = False) -> float | None:
    """The device's dense peak TFLOP/s (bf16, or fp8 when its matmuls run in fp8), None when not known (CPUs)."""
    for fragment, (bf16, f8) in PEAK_TFLOPS.items():
        if fragment.lower() in device_name.lower():
            return (f8 or bf16) if fp8 else bf16
    return None


def mfu(flops: float, seconds: float, device_name: str, fp8: bool = False) -> float | None:
    """Model FLOPs utilisation: the FLOPs of the work done per second over the device's peak (None: peak unknown)."""
    peak = peak_tflops(device_name, fp8)
    return None if peak is None or seconds <= 0 else flops / seconds / (peak * TERA)


def card_peaks(gpu: str | None, fp8: bool = False) -> dict[str, float] | None:
    """Dense peak TFLOP/s of the card a --gpu value names (`models.memory.gpu_card`), by precision: bf16, and fp8
    too when `fp8` (the matmuls run in float8); None when it names no card (a memory size such as 24GB) or the card's
    peak is not known: no bound rather than a guessed one."""
    from weightshop.models.memory import gpu_card

    name = gpu_card(gpu)
    bf16 = None if name is None else peak_tflops(name)
    if bf16 is None:
        return None
    return {"bf16": bf16, "fp8": peak_tflops(name, fp8=True)} if fp8 else {"bf16": bf16}


def lower_bound_s(flops: float, peaks: dict[str, float] | None) -> dict[str, float] | None:
    """Seconds `flops` take at least at each peak (FLOPs / (TFLOP/s x 1e12)): no run is faster; real ones reach a
    fraction of it (the MFU the benchmarks report)."""
    return None if peaks is None else {k: flops / (v * TERA) for k, v in peaks.items()}
