from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import DEVICE_HELP, JSON_OPTION, console, emit, guarded, resolve_device, step_progress
from weightshop.errors import WeightshopError


def read_prompt_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise WeightshopError(f"cannot read prompt file {path}: {e}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise WeightshopError(f"prompt file {path} has no prompts (one per line; # starts a comment)")
    return prompts


@guarded
def generate(
    model: str = typer.Option(..., "--model", "-m", help="Diffusers dir, transformer .safetensors, hub id or built-in name."),
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable)."),
    prompt_file: Path = typer.Option(None, help="A text file with one prompt per line."),
    negative_prompt: str = typer.Option(None, help="Negative prompt (used when guidance > 0)."),
    checkpoint: str = typer.Option(None, help="raw or turbo: picks the sampler preset (default: detected)."),
    components: Path = typer.Option(None, help="Directory with vae/, text_encoder/, tokenizer/ for a single file."),
    width: int = typer.Option(None, help="Image width (multiple of VAE scale x 2; default: the model's)."),
    height: int = typer.Option(None, help="Image height (default: the model's)."),
    steps: int = typer.Option(None, help="Override the checkpoint preset's steps (`weightshop info` shows the preset)."),
    guidance: float = typer.Option(None, help="Override the preset's guidance (Krea's convention: 0 turns it off)."),
    mu: float = typer.Option(None, help="Pin the timestep shift mu (default: the preset's; Raw's depends on the size)."),
    seed: list[int] = typer.Option(None, "--seed", "-s", help="Seed (repeatable). Default 0."),
    count: int = typer.Option(1, help="Images per prompt: seeds seed, seed+1, ... (with one --seed)."),
    batch_size: int = typer.Option(1, help="Images per forward pass (speed/memory only; images depend on seed alone)."),
    lora: list[str] = typer.Option(None, "--lora", help="LoRA file, optionally PATH:STRENGTH (repeatable)."),
    out: Path = typer.Option(Path("weightshop-out/generate"), "--out", "-o", help="Output directory."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    offload: str = typer.Option("none", help="none, model (one model on the device at a time), group (transformer "
                                "blocks stream in) or sequential (every weight streams in; slowest)."),
    group_level: str = typer.Option("block", help="With --offload group: block (a transformer block at a time) or "
                                    "leaf (one layer at a time)."),
    vae_tiling: bool = typer.Option(False, "--vae-tiling", help="Decode in 256 px tiles (less memory, big images)."),
    vae_slicing: bool = typer.Option(False, "--vae-slicing", help="Decode a batch one image at a time."),
    text_encoder: str = typer.Option("keep", help="After encoding: keep, offload (to the CPU) or release it."),
    release_text_encoder: bool = typer.Option(False, help="Same as --text-encoder release."),
    compile: bool = typer.Option(False, "--compile", help="Regional compile of the repeated transformer block "
                                 "(the first image pays the compile)."),
    fp8_matmul: bool = typer.Option(False, "--fp8-matmul", help="Blocks' matmuls in float8 (CUDA 8.9+: Ada, Hopper; "
                                    "changes the output slightly)."),
    int8_matmul: bool = typer.Option(False, "--int8-matmul", help="Blocks' matmuls in int8 (GeForce RTX cards, CPU; "
                                     "changes the output slightly)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="Regional compile with CUDA graphs "
                                     "(reduce-overhead; CUDA only)."),
    step_cache: float = typer.Option(0.0, "--step-cache", metavar="THRESHOLD", help="First-block step cache for "
                                     "Raw's guided steps: reuse the other blocks while the first block's output moved "
                                     "less than THRESHOLD (relative L1; 0.1 is mild). Off (0) by default; changes "
                                     "the output."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Generate images with Krea 2 Raw or Turbo at the checkpoint's preset; PNGs carry their parameters."""
    from weightshop.generate import FastPath, GenerateRequest, speed_up
    from weightshop.generate import generate as run
    from weightshop.generate.fast import check_speed_options
    from weightshop.lora import LoraRequest
    from weightshop.models.loading import load_model
    from weightshop.models.placement import Placement

    placement = Placement(offload, group_level, 1, vae_tiling, vae_slicing,
                          "release" if release_text_encoder else text_encoder)  # bad values fail before loading
    device = resolve_device(device)
    check_speed_options(device, fp8_matmul=fp8_matmul, int8_matmul=int8_matmul, cuda_graphs=cuda_graphs)
    if step_cache and offload != "none":
        raise WeightshopError("--step-cache runs in weightshop's own loop, which needs --offload none")

    prompts = list(prompt or []) + (read_prompt_file(prompt_file) if prompt_file else [])
    seeds = list(seed or [0])
    if count > 1:
        if len(seeds) != 1:
            raise WeightshopError("--count expands one --seed into consecutive seeds; give one --seed with it")
        seeds = list(range(seeds[0], seeds[0] + count))
    request = GenerateRequest(
        prompts=prompts, negative_prompt=negative_prompt, width=width, height=height, steps=steps,
        guidance=guidance, mu=mu, seeds=seeds, batch_size=batch_size,
        loras=[LoraRequest.parse(text) for text in lora or []], text_encoder=placement.text_encoder,
        fast=FastPath(step_cache=step_cache),
    )
    request.validate()
    with console.status(f"loading {model}"):
        loaded = load_model(model, components=components, checkpoint=checkpoint, dtype=dtype, device=device,
                            offload=offload, group_level=group_level, vae_tiling=vae_tiling,
                            vae_slicing=vae_slicing, text_encoder=placement.text_encoder)
    speed = {}
    if compile or fp8_matmul or int8_matmul or cuda_graphs:
        with console.status("preparing the fast path"):
            speed = speed_up(loaded, compile=compile, fp8_matmul=fp8_matmul, int8_matmul=int8_matmul,
                             cuda_graphs=cuda_graphs)
    start = time.perf_counter()
    with step_progress("denoising") as progress:
        images = run(loaded, request, out, on_step=lambda d, t: progress(loaded.checkpoint.name, d, t))
    seconds = time.perf_counter() - start
    rec = images[0].record
    result = {
        "model": rec["model"], "loras": rec["loras"], "steps": rec["steps"], "guidance": rec["guidance"],
        "mu": rec["mu"], "width": rec["width"], "height": rec["height"], "seconds": seconds,
        "placement": placement.to_dict(), "speed_up": speed, "step_cache": step_cache,
        "seconds_per_image": seconds / len(images),
        "images": [{"path": str(i.path), "prompt": i.record["prompt"], "seed": i.record["seed"]} for i in images],
    }
    emit(result, as_json)
    if not as_json:
        table = Table(title=f"{loaded.name} ({loaded.checkpoint.name}): {rec['steps']} steps, guidance "
                            f"{rec['guidance']}, mu {rec['mu']:.3f}, {rec['width']}x{rec['height']}")
        for col in ("file", "seed", "prompt"):
            table.add_column(col)
        for item in result["images"]:
            table.add_row(item["path"], str(item["seed"]), item["prompt"])
        console.print(table)
        console.print(f"{len(images)} images in {seconds:.1f} s ({seconds / len(images):.2f} s/image)")
