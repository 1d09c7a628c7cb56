"""The krea2-nano model card: architecture, recipe and measured quality, written by a command.

`weightshop nano card` (and the build's last stage) measures the packaged weights and writes
weights/MODEL_CARD.md, weights/quality.json and the grid image; docs/krea2-nano.md gets the same card.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from weightshop.io import atomic_write_json, atomic_write_text
from weightshop.models import builtin
from weightshop.models.spec import KREA2
from weightshop.nano import world

DOCS = Path(__file__).resolve().parents[3] / "docs"


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def measure_family(root: Path, prompts: int, seeds: tuple[int, ...], progress=None) -> dict:
    from weightshop.models.loading import load_pair
    from weightshop.nano.evaluate import comparison_grid, measure
    from weightshop.nano.probe import load_probe

    pair = load_pair(root / "krea2-nano-raw", root / "krea2-nano-turbo", dtype="fp32")
    probe = load_probe(root / "probe")
    result = measure({"raw": pair.raw, "turbo": pair.turbo}, probe, prompts, seeds,
                     progress=(lambda label, d, t: progress(label, d, t, {})) if progress else None)
    grid = comparison_grid(result["examples"])
    raw, turbo = result["rows"][0], result["rows"][2]
    targets = {
        "raw_shape_and_colour_at_least_90": raw["acc_shape"] >= 0.9 and raw["acc_colour"] >= 0.9,
        "turbo_within_5_points_all_correct": turbo["all_correct"] >= raw["all_correct"] - 0.05,
        "turbo_at_least_6x_faster": raw["seconds_per_image"] / turbo["seconds_per_image"] >= 6,
    }
    sizes = {
        "transformer_parameters": _params(pair.raw.pipeline.transformer),
        "vae_parameters": _params(pair.raw.pipeline.vae),
        "text_encoder_parameters": _params(pair.raw.pipeline.text_encoder),
        "probe_parameters": _params(probe),
        "transformer_config": dict(pair.raw.pipeline.transformer.config),
        "vae_config": {k: v for k, v in pair.raw.pipeline.vae.config.items() if not k.startswith("latents_")},
        "text_encoder_layers": pair.raw.pipeline.text_encoder.config.text_config.num_hidden_layers,
        "text_encoder_hidden": pair.raw.pipeline.text_encoder.config.text_config.hidden_size,
        "select_layers": list(pair.raw.pipeline.text_encoder_select_layers),
    }
    return {"rows": result["rows"], "targets": targets, "sizes": sizes, "grid": grid,
            "speedup": raw["seconds_per_image"] / turbo["seconds_per_image"]}


def _table(rows: list[dict]) -> str:
    keys = ["setting", "acc_shape", "acc_colour", "acc_shape2", "acc_colour2", "object2_copies_object1", "acc_size",
            "acc_fill", "acc_background", "acc_position", "acc_relation", "all_correct", "seconds_per_image",
            "cpu_seconds_per_image"]
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    body = "".join("| " + " | ".join(
        f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys) + " |\n" for r in rows)
    return head + body


def _text_training(text: dict) -> str:
    if not text.get("steps"):
        return ("weights kept at their seeded random init: next-token training on shapes-world captions collapsed "
                "interchangeable words (red vs blue features 2.6 % apart against 25 % at init), so Raw could not "
                "learn colour")
    if "heldout_readout_accuracy" not in text:
        return f"next-token pretraining on template-wrapped captions, {text['steps']} steps"
    return (f"embeddings frozen at their seeded init, layers trained {text['steps']} steps to make the template's suffix "
            "tokens read the scene out by spatial slot (left or upper object first), so the features bind each "
            "object's words to it as a real Qwen3-VL's do; held-out readout accuracy "
            f"{100 * text['heldout_readout_accuracy']:.1f} %")


def _raw_start(record: dict) -> str:
    """How Raw began: the seeded init, or the earlier Raw it continues (`weightshop nano seed`)."""
    r = record["recipe"]["transformer"]
    if not r.get("warm_start"):
        return "from the seeded init"
    return (f"continuing an earlier build's Raw (weights sha256 {r['warm_start'][:12]}, seeded by `weightshop nano "
            f"seed`) with a {r['warmup']}-step warmup to lr {r['lr']:g}")


def render_card(record: dict, quality: dict, manifest: dict) -> str:
    stages = record["stages"]
    s = quality["sizes"]
    probe_acc = stages.get("probe", {}).get("clean_accuracy", {})
    raw, turbo = KREA2.checkpoint("raw").preset, KREA2.checkpoint("turbo").preset
    return f"""# krea2-nano

Krea 2's architecture and code path at nano size (Krea2Transformer2DModel, AutoencoderKLQwenImage,
Qwen3VLModel text encoder, Krea2Pipeline), trained on CPU on the procedural shapes world. Two checkpoints,
as in the real release: **nano-Raw** (pretrained, sampled at {raw.steps} steps with guidance {raw.guidance:g}) and
**nano-Turbo** (distilled from Raw to {turbo.steps} steps without guidance, `is_distilled`, mu {turbo.mu:g}).
This card was written by `weightshop nano card`; every number below was measured by it.

## Architecture
| component | size |
|---|---|
| transformer | {s['transformer_parameters']:,} parameters: {s['transformer_config']['num_layers']} blocks, hidden {s['transformer_config']['attention_head_dim'] * s['transformer_config']['num_attention_heads']}, {s['transformer_config']['num_attention_heads']} q / {s['transformer_config']['num_key_value_heads']} kv heads, MLP {s['transformer_config']['intermediate_size']}, rope {list(s['transformer_config']['axes_dims_rope'])} |
| VAE | {s['vae_parameters']:,} parameters, f4 (dim_mult {s['vae_config']['dim_mult']}), z {s['vae_config']['z_dim']}; reconstruction PSNR {stages.get('vae', {}).get('psnr_db', float('nan')):.2f} dB |
| text encoder | {s['text_encoder_parameters']:,} parameters, {s['text_encoder_layers']} layers x {s['text_encoder_hidden']}, taps {s['select_layers']} |
| probe | {s['probe_parameters']:,} parameters |
| files | {manifest['total_bytes'] / 2**20:.1f} MiB in all (transformers stored in bf16) |

## Training recipe (reproduced by `weightshop nano build`)
- world: 64 px scenes of 1-2 objects: shapes {', '.join(world.SHAPES)}; {len(world.COLOURS)} colours; backgrounds {', '.join(world.BACKGROUNDS)}; sizes {', '.join(world.SIZES)}; fills {', '.join(world.FILLS)}; positions or relations. Held out (never in Raw's data): {', '.join(world.HELDOUT_CONCEPTS)}.
- VAE: {stages.get('vae', {}).get('steps')} steps, L1 + MSE + edge loss, KL 1e-6 (sees held-out concepts, like a general VAE).
- text encoder: byte-level BPE ({stages.get('text', {}).get('vocab')} tokens, Krea's 34 + 5 template layout); {_text_training(stages.get('text', {}))}.
- nano-Raw: {stages.get('raw', {}).get('steps')} steps x batch {record['recipe']['transformer']['batch']} {_raw_start(record)}; x_t = (1-s) x0 + s noise, v = noise - x0, s {record['recipe']['transformer'].get('timesteps', 'logit_normal')}, 10 % caption dropout, EMA {record['recipe']['transformer']['ema_decay']}.
- nano-Turbo: trajectory distillation onto the {turbo.steps}-step mu {turbo.mu:g} grid from Raw with guidance {record['recipe']['distill']['guidance']} ({record['recipe']['distill']['substeps']} Euler sub-steps per interval), {stages.get('turbo', {}).get('trajectories')} trajectories of batch {record['recipe']['distill']['batch']}; half the intervals start from the student's own state.
- probe: {stages.get('probe', {}).get('steps')} steps on renders of all concepts with generation-like augmentation.

## Probe accuracy on clean renders
{' | '.join(f'{k} {v:.3f}' for k, v in probe_acc.items())}

## Measured quality ({quality['rows'][0]['n']} prompt x seed pairs, probe-judged)
{_table(quality['rows'])}
`acc_shape2` / `acc_colour2`: the second object of two-object prompts; `object2_copies_object1`: the share of
two-object prompts whose second object came out with the first one's shape or colour instead of its own
(attribute binding failing).
Turbo is {quality['speedup']:.1f}x faster per image than Raw at its preset. Targets: {json.dumps(quality['targets'])}.
Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.

![Raw vs Turbo](images/krea2-nano-grid.png)
"""


def read_build_record(workdir: str | Path) -> dict:
    """The build record (workdir/build.json) a card cites; a WeightshopError naming workdir when there is none."""
    from weightshop.errors import WeightshopError

    workdir = Path(workdir)
    path = workdir / "build.json"
    expected = ("the model card cites the record of the `weightshop nano build` that made the family: pass that "
                "build's --workdir (the directory holding its build.json and final/)")
    if not workdir.is_dir():
        raise WeightshopError(f"nano build workdir {workdir} does not exist; {expected}")
    if not path.is_file():
        raise WeightshopError(f"{workdir} has no build record (build.json); {expected}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightshopError(f"{path} is not a readable build record ({e}); {expected}") from None
    _check_record(record, path)
    return record


def _check_record(record, where) -> None:
    from weightshop.errors import WeightshopError

    if not isinstance(record, dict) or not isinstance(record.get("stages"), dict) or not isinstance(
            record.get("recipe"), dict) or "transformer" not in record["recipe"]:
        raise WeightshopError(f"{where} is not a nano build record: expected a build.json with 'stages' and a "
                              "'recipe' (written by `weightshop nano build`)")


def write_card(root: Path, record: dict, recipe, progress=None) -> dict:
    """Measure the family at `root` and write its card, citing `record` (see read_build_record)."""
    from weightshop.errors import WeightshopError

    root = Path(root)
    _check_record(record, "the build record given")
    if not (root / builtin.CHECKSUMS).is_file():
        raise WeightshopError(f"{root} holds no packaged nano family ({builtin.CHECKSUMS} is missing): expected the "
                              "output of `weightshop nano build` (krea2-nano-raw/, krea2-nano-turbo/, probe/)")
    quality = measure_family(root, recipe.eval_prompts, tuple(recipe.eval_seeds), progress)
    quality["grid"].save(root / "grid.png")
    manifest = json.loads((root / builtin.CHECKSUMS).read_text())
    card = render_card(record, quality, manifest)
    atomic_write_text(root / "MODEL_CARD.md", card)
    payload = {k: v for k, v in quality.items() if k != "grid"}
    atomic_write_json(root / "quality.json", payload)
    if root.resolve() == builtin.WEIGHTS.resolve():
        (DOCS / "images").mkdir(parents=True, exist_ok=True)
        quality["grid"].save(DOCS / "images" / "krea2-nano-grid.png")
        atomic_write_text(DOCS / "krea2-nano.md", card)
    builtin.write_checksums(root)
    return {"rows": quality["rows"], "targets": quality["targets"], "speedup": quality["speedup"]}


