"""A ComfyUI workflow (API format, what POST /prompt takes) for Turbo + a LoRA, and its structural check.

The graph, node by node (checked against ComfyUI's source, not run here):
  UNETLoader        the Turbo transformer (the official single file, in models/diffusion_models/)
  CLIPLoader        Qwen3-VL-4B with type "krea2" (ComfyUI's CLIPType.KREA2: the 12-layer tap and Krea's
                    prompt template live in comfy/text_encoders/krea2.py)
  VAELoader         the Qwen-Image VAE Krea 2 shares
  LoraLoaderModelOnly  the LoRA converted to ComfyUI's names, at the recommended strength (transformer only:
                    Krea 2 LoRAs never touch the text encoder)
  ModelSamplingFlux base_shift = max_shift = Turbo's mu, so the exponential shift is pinned to the preset at
                    every size (ComfyUI's Krea 2 config already defaults to 1.15; pinning makes the file say so)
  CLIPTextEncode    the prompt; ConditioningZeroOut gives KSampler the negative it requires (unused at cfg 1)
  EmptySD3LatentImage  16-channel latents at 1/8 size (the Qwen-Image VAE's layout; EmptyLatentImage is 4-channel)
  KSampler          Turbo's steps, cfg = classic_cfg_scale(Turbo's guidance) = 1 (one pass, no guidance),
                    sampler "euler" + scheduler "simple": on ModelSamplingFlux's table the simple scheduler visits
                    exactly the shifted linspace(1, 1/N, N) + [0] weightshop samples on (comfy_simple_sigmas
                    re-derives it), and euler is the same first-order flow step
  VAEDecode, SaveImage
ComfyUI draws its starting noise differently from diffusers, so a seed gives a different (equally valid) image.
"""

from __future__ import annotations

import numpy as np

from weightshop.models.schedule import time_shift
from weightshop.models.spec import KREA2, FamilySpec, classic_cfg_scale

CLIP_TYPE = "krea2"
SAMPLER = "euler"
SCHEDULER = "simple"
TEXT_ENCODER_FILE = "qwen3vl_4b_bf16.safetensors"
VAE_FILE = "qwen_image_vae.safetensors"

# class_type -> (inputs: name -> Python type of a literal, or the upstream output type of a link; outputs)
NODE_TYPES: dict[str, tuple[dict[str, object], tuple[str, ...]]] = {
    "UNETLoader": ({"unet_name": str, "weight_dtype": str}, ("MODEL",)),
    "CLIPLoader": ({"clip_name": str, "type": str, "device": str}, ("CLIP",)),
    "VAELoader": ({"vae_name": str}, ("VAE",)),
    "LoraLoaderModelOnly": ({"model": "MODEL", "lora_name": str, "strength_model": float}, ("MODEL",)),
    "ModelSamplingFlux": ({"model": "MODEL", "max_shift": float, "base_shift": float, "width": int,
                           "height": int}, ("MODEL",)),
    "CLIPTextEncode": ({"clip": "CLIP", "text": str}, ("CONDITIONING",)),
    "ConditioningZeroOut": ({"conditioning": "CONDITIONING"}, ("CONDITIONING",)),
    "EmptySD3LatentImage": ({"width": int, "height": int, "batch_size": int}, ("LATENT",)),
    "KSampler": ({"model": "MODEL", "seed": int, "steps": int, "cfg": float, "sampler_name": str,
                  "scheduler": str, "positive": "CONDITIONING", "negative": "CONDITIONING",
                  "latent_image": "LATENT", "denoise": float}, ("LATENT",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": str}, ()),
}


def turbo_lora_workflow(lora_name: str, strength: float, prompt: str, *, seed: int = 0, width: int = 1024,
                        height: int = 1024, unet_name: str | None = None, text_encoder: str = TEXT_ENCODER_FILE,
                        vae: str = VAE_FILE, family: FamilySpec = KREA2, prefix: str = "weightshop_turbo_lora") -> dict:
    """The API-format graph for one image on Turbo with one LoRA; every sampler number comes from the spec."""
    turbo = family.checkpoint("turbo")
    preset = turbo.preset
    mu = preset.mu_for(height, width, rule=family.shift)

    def node(class_type: str, **inputs) -> dict:
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": class_type}}

    return {
        "1": node("UNETLoader", unet_name=unet_name or turbo.single_file, weight_dtype="default"),
        "2": node("CLIPLoader", clip_name=text_encoder, type=CLIP_TYPE, device="default"),
        "3": node("VAELoader", vae_name=vae),
        "4": node("LoraLoaderModelOnly", model=["1", 0], lora_name=lora_name, strength_model=float(strength)),
        "5": node("ModelSamplingFlux", model=["4", 0], max_shift=float(mu), base_shift=float(mu),
                  width=int(width), height=int(height)),
        "6": node("CLIPTextEncode", clip=["2", 0], text=prompt),
        "7": node("ConditioningZeroOut", conditioning=["6", 0]),
        "8": node("EmptySD3LatentImage", width=int(width), height=int(height), batch_size=1),
        "9": node("KSampler", model=["5", 0], seed=int(seed), steps=int(preset.steps),
                  cfg=float(classic_cfg_scale(preset.guidance)), sampler_name=SAMPLER, scheduler=SCHEDULER,
                  positive=["6", 0], negative=["7", 0], latent_image=["8", 0], denoise=1.0),
        "10": node("VAEDecode", samples=["9", 0], vae=["3", 0]),
        "11": node("SaveImage", images=["10", 0], filename_prefix=prefix),
    }


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def validate_workflow(workflow: dict) -> list[str]:
    """Problems with an API-format graph (empty when sound): unknown nodes, missing or extra inputs, literals
    of the wrong type, links to absent nodes or outputs or of the wrong type, cycles, no output node."""
    problems = []
    for node_id, node in workflow.items():
        kind = node.get("class_type")
        if kind not in NODE_TYPES:
            problems.append(f"node {node_id}: unknown class_type {kind!r}")
            continue
        expected, _ = NODE_TYPES[kind]
        inputs = node.get("inputs", {})
        for name in sorted(set(expected) - set(inputs)):
            problems.append(f"node {node_id} ({kind}): input {name!r} missing")
        for name in sorted(set(inputs) - set(expected)):
            problems.append(f"node {node_id} ({kind}): unexpected input {name!r}")
        for name, want in expected.items():
            if name not in inputs:
                continue
            value = inputs[name]
            if isinstance(want, str):
                if not _is_link(value):
                    problems.append(f"node {node_id} ({kind}).{name}: expected a link to a {want} output, "
                                    f"got {value!r}")
                    continue
                source = workflow.get(value[0])
                if source is None or source.get("class_type") not in NODE_TYPES:
                    problems.append(f"node {node_id} ({kind}).{name}: links to missing node {value[0]!r}")
                    continue
                outputs = NODE_TYPES[source["class_type"]][1]
                if not 0 <= value[1] < len(outputs):
                    problems.append(f"node {node_id} ({kind}).{name}: node {value[0]} has no output {value[1]}")
                elif outputs[value[1]] != want:
                    problems.append(f"node {node_id} ({kind}).{name}: expects {want}, node {value[0]} gives "
                                    f"{outputs[value[1]]}")
            elif want is float and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                problems.append(f"node {node_id} ({kind}).{name}: expected a number, got {value!r}")
            elif want is not float and not (isinstance(value, want) and not isinstance(value, bool)):
                problems.append(f"node {node_id} ({kind}).{name}: expected {want.__name__}, got {value!r}")
    if not any(NODE_TYPES.get(n.get("class_type"), (None, (0,)))[1] == () for n in workflow.values()):
        problems.append("no output node (SaveImage): ComfyUI would refuse the prompt")
    problems += _cycles(workflow)
    return problems


def _cycles(workflow: dict) -> list[str]:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node_id: str) -> bool:
        if state.get(node_id) == 1:
            return True
        if state.get(node_id) == 2 or node_id not in workflow:
            return False
        state[node_id] = 1
        found = any(visit(v[0]) for v in workflow[node_id].get("inputs", {}).values() if _is_link(v))
        state[node_id] = 2
        return found

    return [f"node {n}: part of a cycle" for n in workflow if state.get(n) != 2 and visit(n)]


def comfy_simple_sigmas(steps: int, mu: float, table: int = 10000) -> np.ndarray:
    """ComfyUI's "simple" scheduler over ModelSamplingFlux's sigma table (t = (i + 1) / table, shifted by mu),
    re-derived here to show it equals weightshop's `sampling_sigmas(steps, mu)`."""
    sigmas = time_shift(mu, np.arange(1, table + 1) / table)
    stride = table / steps
    return np.array([sigmas[-(1 + int(x * stride))] for x in range(steps)] + [0.0])
