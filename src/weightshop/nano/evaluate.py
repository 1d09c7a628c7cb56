"""Measure krea2-nano: probe accuracy per attribute, all-attributes-correct and CPU seconds per image.

Images are made through weightshop.generate (the same path users run), so the numbers describe the
shipped models at their presets, not a training-time shortcut.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from weightshop.generate import GenerateRequest, generate
from weightshop.models.spec import KREA2
from weightshop.nano import world
from weightshop.nano.probe import Probe, predict, score
from weightshop.report import image_grid


@dataclass(frozen=True)
class Setting:
    label: str
    checkpoint: str  # which model of the pair
    steps: int | None = None
    guidance: float | None = None


_RAW, _TURBO = KREA2.checkpoint("raw").preset, KREA2.checkpoint("turbo").preset
SETTINGS = (
    Setting(f"nano-Raw preset ({_RAW.steps} steps, guidance {_RAW.guidance:g})", "raw"),
    # Raw sampled like Turbo: what distillation buys at the same cost
    Setting(f"nano-Raw {_TURBO.steps} steps, no guidance", "raw", steps=_TURBO.steps, guidance=_TURBO.guidance),
    Setting(f"nano-Turbo preset ({_TURBO.steps} steps)", "turbo"),
)


def evaluation_suite(prompts: int, seeds: tuple[int, ...], heldout: str | None = None):
    """(scene, caption, seed) for each prompt x seed: fixed, so every run measures the same thing."""
    return [(scene, text, seed) for scene, text in world.prompt_suite(prompts, seed=0, heldout=heldout)
            for seed in seeds]


def measure(models: dict, probe: Probe, prompts: int = 100, seeds: tuple[int, ...] = (0, 1),
            settings: tuple[Setting, ...] = SETTINGS, batch_size: int = 50, heldout: str | None = None,
            loras=None, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Generate the suite under each setting and score it; returns rows plus example images per setting."""
    suite = evaluation_suite(prompts, seeds, heldout)
    scenes = [scene for scene, _, _ in suite]
    rows, examples = [], {}
    for setting in settings:
        model = models[setting.checkpoint]
        # Warm up (first calls pay one-time kernel set-up) so the timing is the steady state.
        generate(model, GenerateRequest(prompts=[suite[0][1]], seeds=[0], steps=1, guidance=setting.guidance))
        images = []
        start = time.perf_counter()
        cpu_start = time.process_time()
        # One request per seed keeps each image's noise tied to its own seed, batched across prompts.
        for seed in seeds:
            texts = [text for _, text, s in suite if s == seed]
            req = GenerateRequest(prompts=texts, seeds=[seed], steps=setting.steps, guidance=setting.guidance,
                                  batch_size=batch_size, loras=list(loras or []))
            images += [g.image for g in generate(model, req, on_step=(
                lambda d, t, label=setting.label: progress(label, d, t)) if progress else None)]
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        # generate() returns prompt-major within a seed; restore suite order (prompt-major over seeds).
        per_seed = len(images) // len(seeds)
        ordered = [images[j * per_seed + i] for i in range(per_seed) for j in range(len(seeds))]
        result = score(predict(probe, ordered), scenes)
        rows.append({"setting": setting.label, **result, "seconds_per_image": wall / len(ordered),
                     "cpu_seconds_per_image": cpu / len(ordered), "threads": torch.get_num_threads()})
        examples[setting.label] = ordered
    return {"rows": rows, "examples": examples, "captions": [text for _, text, _ in suite]}


def comparison_grid(examples: dict, columns: int = 8):
    """One row per setting, `columns` suite images each."""
    labels = list(examples)
    return image_grid([examples[label][:columns] for label in labels], row_labels=[l.split(" (")[0] for l in labels],
                      cell=96)
