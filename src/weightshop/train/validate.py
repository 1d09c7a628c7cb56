"""Validation while training: render with the LoRA on Raw (its preset) and on Turbo (its preset).

Turbo is where the LoRA will run, so it is watched while training on Raw. The LoRA is applied exactly as a
user will apply it: the current weights are saved as a LoRA file and loaded through
weightshop.lora.apply_loras (every module verified). Raw and Turbo share one VAE and text encoder.
On krea2-nano, the probe judge (weightshop.judge) reports the concept hit rate (how many images show the concept
named in `validation.concept`).
"""

from __future__ import annotations

from pathlib import Path

from weightshop.generate import GenerateRequest, generate
from weightshop.lora import LoraRequest, apply_loras
from weightshop.report import image_grid


class Validator:
    def __init__(self, cfg, probe_dir: Path | None = None):
        from weightshop.models.loading import load_model, load_pair

        self.cfg = cfg
        v = cfg.validation
        self.prompts, self.seeds = list(v.prompts), list(v.seeds)
        if cfg.model.turbo:
            pair = load_pair(cfg.model.raw, cfg.model.turbo, components=cfg.model.components, dtype="fp32")
            self.models = {"raw": pair.raw, "turbo": pair.turbo}
        else:
            self.models = {"raw": load_model(cfg.model.raw, components=cfg.model.components, checkpoint="raw",
                                             dtype="fp32")}
        self.judge = None
        if v.concept and probe_dir is not None:
            from weightshop.judge import ProbeScorer

            self.judge = ProbeScorer.from_dir(probe_dir, v.concept)

    def run(self, lora_file: Path, out_dir: Path) -> dict:
        from weightshop.judge import CONCEPT

        out_dir.mkdir(parents=True, exist_ok=True)
        result, rows, labels = {}, [], []
        for name, model in self.models.items():
            pipe = model.pipeline
            applied = apply_loras(pipe, [LoraRequest(lora_file, 1.0)])
            images = [g.image for g in generate(model, GenerateRequest(prompts=self.prompts, seeds=self.seeds,
                                                                        batch_size=len(self.prompts)))]
            pipe.delete_adapters([a.name for a in applied])
            rows.append(images)
            labels.append(name)
            entry = {"images": len(images), "modules": applied[0].modules}
            if self.judge is not None:
                entry["concept_hit_rate"] = self.judge.score(images, [])[CONCEPT]
            result[name] = entry
        grid = image_grid(rows, row_labels=labels, cell=96)
        grid.save(out_dir / "grid.png")
        result["grid"] = str(out_dir / "grid.png")
        return result
