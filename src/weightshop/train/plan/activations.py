"""The activations a training step keeps for backward, term by term, read off autograd's saved tensors."""

from __future__ import annotations

from dataclasses import dataclass

from weightshop.models.shape import ModelShape
from weightshop.train.plan.params import DTYPE_BYTES, ParamCounts


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
                           lora_dropout: bool = False, dora: bool = False) -> dict[str, int]:
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
    - DoRA (2 C per output of each adapted Linear): peft's DoRA output (m/||V|| - 1) * base + m/||V|| * lora keeps
      the frozen layer's output and the LoRA's for the magnitude's gradient (measured on krea2-nano: docs/memory.md).
    """
    R, C = dt.residual, dt.compute
    gated = modulated and modulation_grad

    def lora_in(names: tuple[str, ...], width: int, source_bytes: int) -> int:
        return lora_input_bytes(len(adapted & set(names)), width, source_bytes, dt, lora_dropout)

    widths = {"attn.to_q": hidden, "attn.to_k": kv_dim, "attn.to_v": kv_dim, "attn.to_gate": hidden,
              "attn.to_out.0": hidden, "ff.gate": mlp, "ff.up": mlp, "ff.down": hidden}
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
        # DoRA scales the frozen output and the LoRA output by m / ||W + BA|| and keeps both for the magnitude's grad
        "DoRA base and LoRA outputs": 2 * C * sum(widths.get(n, 0) for n in adapted) if dora else 0,
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
                     checkpointing: bool, rank: int, lora_dropout: bool = False, dora: bool = False) -> dict[str, int]:
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
    common = dict(rank=rank, dt=dt, lora_dropout=lora_dropout, dora=dora)
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
