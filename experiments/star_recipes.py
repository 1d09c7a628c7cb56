"""Recipe experiments for the demo's star LoRA on krea2-nano (the tables in docs/transfer.md).

Curates the demo's star set once (the same stage `weightshop demo` runs), then for each recipe trains a LoRA
from that cache with the demo's recipe plus the recipe's overrides, renders the 96 judge prompts x seed 0 on
nano-Raw and nano-Turbo at strength 1 and lets the probe judge them: star hit rate, adherence on the other
attributes, and the hit rate by composition (alone / beside another object). One JSON line per recipe goes to
OUT/results.jsonl; a recipe already there is skipped, so an interrupted sweep resumes.

    python experiments/star_recipes.py --out weightshop-out/recipes demo seed1:schedule.seed=1 \
        ema:optim.ema=0.99 minsnr:schedule.loss_weighting=min_snr

A recipe is NAME or NAME:KEY=VALUE,KEY=VALUE (the `weightshop train --set` syntax). Takes about 5-6 minutes per
recipe on a 2-core CPU. `--mirror` adds a left-right mirror of every clean image to the set before the curate
stage checks it, its caption's "left" and "right" swapped (horizontal-flip augmentation done by hand).
`--all-captions` gives every curated image one item per caption the world writes for its scene (its own and
the seven templates', among them the one that names the other object first).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from weightshop import demo
from weightshop.generate import GenerateRequest, generate
from weightshop.judge import concept_present, other_attribute_accuracy
from weightshop.lora.apply import LoraRequest
from weightshop.models import builtin
from weightshop.models.loading import load_pair
from weightshop.nano.domain import composition
from weightshop.nano.probe import load_probe, predict
from weightshop.train import train
from weightshop.transfer.run import make_jobs

CONCEPT = "star"


def mirrored_set(write_domain_set):
    """write_domain_set, then a mirrored copy (caption's left/right swapped) of each image no fault was planted in."""
    import re

    from PIL import Image, ImageOps

    def write(folder, concept, **kw):
        planted = write_domain_set(folder, concept, **kw)
        faulty = {f for files in planted.values() for f in files}
        swap = {"left": "right", "right": "left"}
        for png in sorted(Path(folder).glob("*.png")):
            if png.name in faulty or not png.with_suffix(".txt").is_file() or "_copy" in png.name:
                continue
            with Image.open(png) as im:
                ImageOps.mirror(im.convert("RGB")).save(png.with_name(png.stem + "_mirror.png"))
            text = re.sub(r"\b(left|right)\b", lambda m: swap[m.group(1)], png.with_suffix(".txt").read_text())
            png.with_name(png.stem + "_mirror.txt").write_text(text)
        return planted

    return write


def all_captions(curate: Path, concept: str) -> int:
    """Rewrite curate/dataset.json so that every accepted image is one item per distinct caption of its scene."""
    import copy

    from weightshop.nano import world
    from weightshop.nano.pretrain import scene_from_json

    manifest = json.loads((curate / "dataset.json").read_text())
    scenes = json.loads((curate / f"{concept}.scenes.json").read_text())
    items = []
    for item in manifest["items"]:
        spec = scenes.get(item["file"]) if item["verdict"] != "rejected" else None
        if spec is None:
            items.append(item)
            continue
        for text in dict.fromkeys([item["caption"], *world.captions(scene_from_json(spec), spec["seed"])]):
            items.append({**copy.deepcopy(item), "caption": text})
    manifest["items"] = items
    (curate / "dataset.json").write_text(json.dumps(manifest, indent=1))
    return len(items)


def judge(model, lora: Path, jobs, probe, strength: float = 1.0) -> dict:
    images = generate(model, GenerateRequest(prompts=[j.prompt for j in jobs], seeds=[0], batch_size=48,
                                             loras=[LoraRequest(lora, strength)]))
    model.pipeline.delete_adapters(model.pipeline.get_active_adapters())
    predicted = predict(probe, [i.image for i in images])
    hits = [concept_present(p, CONCEPT) for p in predicted]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for hit, job in zip(hits, jobs):
        kind = composition(job.scene, CONCEPT)
        by_kind["alone" if kind.startswith("alone") else "pair " + kind.split()[2] + " " + kind.split()[3]].append(hit)
    return {"hit_rate": float(np.mean(hits)),
            "adherence": other_attribute_accuracy(predicted, [j.scene for j in jobs], CONCEPT),
            "by_composition": {k: [int(sum(v)), len(v)] for k, v in sorted(by_kind.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("weightshop-out/recipes"))
    parser.add_argument("--turbo", action="store_true", help="also judge on nano-Turbo at strength 1")
    parser.add_argument("--raw-strengths", default="1", help="Raw is judged at each of these strengths")
    parser.add_argument("--mirror", action="store_true", help="add left-right mirrored copies to the set")
    parser.add_argument("--all-captions", action="store_true", help="each image once per caption of its scene")
    parser.add_argument("--family", type=Path, default=builtin.WEIGHTS, help="a packaged nano family (default: the committed one)")
    args = parser.parse_args()
    work, results = args.out, args.out / "results.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["name"] for line in results.read_text().splitlines()} if results.is_file() else set()
    raw_dir, turbo_dir, probe_dir = builtin.paths(args.family)
    pair = load_pair(raw_dir, turbo_dir, dtype="fp32")
    if not (work / "curate" / "dataset.json").is_file():
        if args.mirror:
            import weightshop.nano.domain as domain

            domain.write_domain_set = mirrored_set(domain.write_domain_set)
        demo.curate_concept_set(Path(pair.raw.source.transformer), work, lambda *a: None, CONCEPT)
        if args.all_captions:
            all_captions(work / "curate", CONCEPT)
    probe = load_probe(probe_dir)
    jobs, _ = make_jobs(None, CONCEPT, (0,), demo.DEMO_JUDGE_PROMPTS)
    for recipe in args.recipes:
        name, _, sets = recipe.partition(":")
        if name in done:
            continue
        overrides = [s for s in sets.split(",") if s]
        start = time.perf_counter()
        result = train(demo.train_config(pair, work, name, overrides))
        row = {"name": name, "overrides": overrides, "train_seconds": time.perf_counter() - start,
               "loss_ema": result["loss_ema"], "raw": judge(pair.raw, Path(result["lora"]), jobs, probe)}
        for strength in [float(s) for s in args.raw_strengths.split(",") if float(s) != 1.0]:
            row[f"raw_{strength:g}"] = judge(pair.raw, Path(result["lora"]), jobs, probe, strength)
        if args.turbo:
            row["turbo"] = judge(pair.turbo, Path(result["lora"]), jobs, probe)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
