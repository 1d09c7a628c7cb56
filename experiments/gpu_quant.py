"""The prepared GPU check for quantization (issue 20): full-size Krea 2 Turbo with random weights at 1024 x 1024, per
weight format: seconds per denoising step, the stages' seconds and peak memory, and the pipeline's peak with the
text encoder released and each model on the device only while it runs (`--offload model --text-encoder release`),
against `weightshop plan --inference`'s prediction for the same mode and the issue's goal (16 GiB for 8-bit
formats, 10 GiB for 4-bit ones). Speed and memory do not depend on the weight values, so random weights stand in,
and GGUF layers of one shape share their quantized blocks (`quantize_in_memory(share_by_shape=True)`): GGUF's CPU
quantizers would take longer on 12.8 B parameters than the whole check.

    python experiments/gpu_quant.py --out weightshop-out/gpu_quant.json            # on the GPU, about 5 minutes
    python experiments/gpu_quant.py --nano --device cpu --size 64 --steps 2        # the same path on krea2-nano

Each stage runs alone on the device (what model offload with a released text encoder does), so the pipeline's peak
is the largest stage's; the offload's host-to-device copies are not timed (they depend on the host's PCIe link).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

FORMATS = "bf16,fp8,fp8-channel,fp8-scaled,int8,q8_0,q4_0,q4_k"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def fresh(device: str) -> int:
    """Free what the last stage left and start counting the peak; returns what is allocated now (0 on CPU)."""
    gc.collect()
    if not device.startswith("cuda"):
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak(device: str) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None


def build(cls_or_fn, dtype: torch.dtype, device: str):
    """A module built straight on `device` in `dtype` with its random initialisation (no host copy)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls_or_fn()
    finally:
        torch.set_default_dtype(before)


def shapes(nano: bool):
    """(transformer config, text encoder config, VAE config, text encoder layers tapped, inference shape)."""
    from weightshop.generate.memory import full_size_inference_shape, model_inference_shape
    from weightshop.models.loading import resolve_source, text_encoder_select_layers
    from weightshop.models.shape import full_size_component_configs, source_component_configs, source_shape
    from weightshop.models.spec import KREA2

    if nano:
        source = resolve_source("krea2-nano-turbo")
        te, vae = source_component_configs(source)
        return (source_shape(source).config, te, vae, text_encoder_select_layers(source.components),
                model_inference_shape("krea2-nano-turbo"))
    from weightshop.models.shape import full_size_shape

    te, vae = full_size_component_configs()
    return full_size_shape().config, te, vae, KREA2.text_encoder_select_layers, full_size_inference_shape()


def encode_stage(te_config: dict, layers, tokens: int, dtype, device: str) -> tuple[dict, torch.Tensor]:
    from transformers import Qwen3VLConfig, Qwen3VLModel

    start_bytes = fresh(device)
    config = Qwen3VLConfig(**{k: v for k, v in te_config.items() if not k.startswith("_")})
    encoder = build(lambda: Qwen3VLModel(config), dtype, device).eval()
    weights = (torch.cuda.memory_allocated(device) - start_bytes) if device.startswith("cuda") else None
    ids = torch.randint(0, config.text_config.vocab_size, (1, tokens), device=device)
    with torch.no_grad():
        sync(device)
        began = time.perf_counter()
        out = encoder(input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), output_hidden_states=True)
        text = torch.stack([out.hidden_states[i] for i in layers], dim=2)
        sync(device)
        seconds = time.perf_counter() - began
    result = {"seconds": seconds, "weights_bytes": weights, "peak_bytes": peak(device)}
    text = text.detach().clone()
    del encoder, out
    return result, text


def denoise_stage(config: dict, fmt: str, text: torch.Tensor, size: int, steps: int, vae_scale: int, dtype,
                  device: str) -> dict:
    from diffusers import Krea2Transformer2DModel

    from weightshop.models.quantized import quantize_in_memory

    fresh(device)
    model = build(lambda: Krea2Transformer2DModel.from_config(config), dtype, device).eval()
    built = time.perf_counter()
    if fmt != "bf16":
        quantize_in_memory(model, fmt, share_by_shape=True)
    quantize_s = time.perf_counter() - built
    start_bytes = fresh(device)
    side = size // vae_scale // 2
    tokens, t = side * side, text.shape[1]
    latents = torch.randn(1, tokens, config["in_channels"], device=device, dtype=dtype)
    ids = torch.zeros(t + tokens, 3, device=device)
    ids[t:, 1] = torch.arange(tokens, device=device) // side
    ids[t:, 2] = torch.arange(tokens, device=device) % side
    mask = torch.ones(1, t, dtype=torch.bool, device=device)
    times = []
    with torch.no_grad():
        for i in range(steps + 1):  # the first is a warm-up (kernels chosen, caches filled)
            sync(device)
            began = time.perf_counter()
            model(latents, text.to(dtype), torch.tensor([1.0 - i / (steps + 1)], device=device), ids, mask,
                  return_dict=False)
            sync(device)
            times.append(time.perf_counter() - began)
    del model
    return {"weights_bytes": start_bytes if device.startswith("cuda") else None, "quantize_s": quantize_s,
            "s_per_step": sorted(times[1:])[len(times[1:]) // 2], "s_per_step_all": times[1:],
            "peak_bytes": peak(device), "image_tokens": tokens, "text_tokens": t}


def decode_stage(vae_config: dict, size: int, vae_scale: int, tiling: bool, dtype, device: str) -> dict:
    from diffusers import AutoencoderKLQwenImage

    fresh(device)
    vae = build(lambda: AutoencoderKLQwenImage.from_config(vae_config), dtype, device).eval()
    if tiling:
        vae.enable_tiling()
    z = torch.randn(1, vae_config.get("z_dim", 16), 1, size // vae_scale, size // vae_scale, device=device,
                    dtype=dtype)
    with torch.no_grad():
        sync(device)
        began = time.perf_counter()
        vae.decode(z, return_dict=False)
        sync(device)
        seconds = time.perf_counter() - began
    del vae
    return {"tiling": tiling, "seconds": seconds, "peak_bytes": peak(device)}


def main(argv: list[str] | None = None) -> int:
    from weightshop.generate.memory import goal_gib, predict_inference
    from weightshop.models.placement import Placement

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", default=FORMATS)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8, help="Turbo's 8 steps")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--nano", action="store_true", help="krea2-nano's shapes instead of full size")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="weightshop-out/gpu_quant.json")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16
    config, te, vae_cfg, layers, inference_shape = shapes(args.nano)
    vae_scale = 2 ** len(vae_cfg.get("temperal_downsample", [0, 0, 0]))
    device = args.device
    report = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "size": args.size, "steps": args.steps, "nano": args.nano, "rows": []}
    encode, text = encode_stage(te, layers, args.text_tokens, dtype, device)
    report["encode"] = encode
    report["decode"] = [decode_stage(vae_cfg, args.size, vae_scale, tiling, dtype, device) for tiling in (False, True)]
    print(json.dumps({"encode": encode, "decode": report["decode"]}), flush=True)
    decode_peak = min((d["peak_bytes"] for d in report["decode"] if d["peak_bytes"] is not None), default=None)
    for fmt in args.formats.split(","):
        row = {"format": fmt, **denoise_stage(config, fmt, text, args.size, args.steps, vae_scale, dtype, device)}
        row["end_to_end_s"] = encode["seconds"] + args.steps * row["s_per_step"] + report["decode"][0]["seconds"]
        stage_peaks = [p for p in (encode["peak_bytes"], row["peak_bytes"], decode_peak) if p is not None]
        row["pipeline_peak_gib"] = max(stage_peaks) / 2**30 if stage_peaks else None
        plan = predict_inference(inference_shape, fmt=fmt, height=args.size,
                                 placement=Placement(offload="model", text_encoder="release", vae_tiling=True))
        row["predicted_gib"] = plan.allocated / 2**30
        row["goal_gib"] = goal_gib(fmt)
        row["meets_goal"] = (None if row["goal_gib"] is None or row["pipeline_peak_gib"] is None
                             else row["pipeline_peak_gib"] <= row["goal_gib"])
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        gc.collect()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
