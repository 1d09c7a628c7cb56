"""The evaluation harness's planted cases on krea2-nano, in full (tests/eval/ runs them at reduced size):

  aa        A/A: krea2-nano-turbo against itself on other seed sets, gated with a noise floor: the false-alarm rate
  degrade   noise added to the transformer blocks' weights at growing scales: the smallest scale the gate catches
  memorise  a star LoRA over-trained on 4 images: `eval lora` must flag memorisation
  mark      a star LoRA trained on images that all carry a corner mark: `eval lora` must flag the learned mark

    python experiments/eval_planted.py --workdir /tmp/planted aa degrade memorise mark

Results are written to <workdir>/planted.json and summarised in docs/eval.md. Public API only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weightshop.eval.gate import gate, noise_floor
from weightshop.eval.harness import evaluate
from weightshop.eval.lora import evaluate_lora
from weightshop.eval.planted import noisy_copy
from weightshop.eval.suites import nano_suite
from weightshop.judge import ProbeScorer
from weightshop.models import builtin
from weightshop.models.loading import load_model, load_pair

GATED = ["probe.adherence", "probe.all_correct"]


def degraded_copy(root: Path, scale: float) -> Path:
    return noisy_copy(builtin.paths()[1], root / f"turbo-noise-{scale:g}", scale)


def run_of(model, suite, out: Path, name: str, offset: int = 0):
    judge = ProbeScorer.from_dir(builtin.PROBE_DIR, "star")
    return evaluate(model, suite, out / name, judges=[judge], features=False, ocr=False, batch_size=24,
                    seed_offset=offset, cache_dir=out / "cache")


def aa(out: Path, trials: int = 10) -> dict:
    suite = nano_suite("star", subject=24, plain=24)
    model = load_model("krea2-nano-turbo", dtype="fp32")
    floor = noise_floor(run_of(model, suite, out, "aa-floor-0"), run_of(model, suite, out, "aa-floor-1", 1000))
    fails = []
    for t in range(trials):
        base = run_of(model, suite, out, f"aa-{t}-a", 2000 + 2 * t)
        cand = run_of(model, suite, out, f"aa-{t}-b", 2001 + 2 * t)
        fails.append(not gate(cand, base, floor["tolerances"], metrics=GATED).passed)
    return {"trials": trials, "false_alarms": int(sum(fails)), "tolerances": floor["tolerances"]}


def degrade(out: Path, scales=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5)) -> dict:
    suite = nano_suite("star", subject=24, plain=24)
    model = load_model("krea2-nano-turbo", dtype="fp32")
    floor = noise_floor(run_of(model, suite, out, "aa-floor-0"), run_of(model, suite, out, "aa-floor-1", 1000))
    base = run_of(model, suite, out, "aa-floor-0")
    rows = []
    for scale in scales:
        bad = run_of(load_model(degraded_copy(out, scale), checkpoint="turbo", dtype="fp32"), suite, out,
                     f"noise-{scale:g}")
        result = gate(bad, base, floor["tolerances"], metrics=GATED)
        rows.append({"scale": scale, "passed": result.passed,
                     "diffs": {r.metric: [round(r.diff, 4), round(r.lo, 4), round(r.hi, 4)] for r in result.rows}})
    caught = [r["scale"] for r in rows if not r["passed"]]
    return {"rows": rows, "smallest_caught": min(caught) if caught else None}


def _train_set(out: Path, name: str, keep: int | None, mark: bool) -> tuple[Path, Path]:
    """A star training set from the demo's curate stage: the first `keep` usable images, each with a corner mark
    when `mark`, curated and cached like the demo's."""
    from weightshop.data import check_dataset, write_manifest
    from weightshop.data.cache import build_cache
    from weightshop.demo import curate_concept_set

    work = out / name
    if not (work / "curate" / "dataset.json").exists():
        curate_concept_set(builtin.paths()[0], work, lambda *a: None, "star")
    src = work / "set"
    if not src.exists():
        manifest = json.loads((work / "curate" / "dataset.json").read_text())
        root = Path(manifest["source"])
        usable = [it for it in manifest["items"] if it["verdict"] != "rejected"][:keep]
        src.mkdir(parents=True)
        for item in usable:
            image = Image.open(root / item["file"]).convert("RGB")
            if mark:
                draw = ImageDraw.Draw(image)
                w, h = image.size
                draw.rectangle([w - 14, h - 10, w - 2, h - 2], fill=(255, 255, 255))
                draw.text((w - 13, h - 11), "w", fill=(0, 0, 0))
            image.save(src / item["file"])
            (src / item["file"]).with_suffix(".txt").write_text(item["caption"])
    dataset = work / "dataset.json"
    if not dataset.exists():
        write_manifest(check_dataset(src, target_area=64 * 64, multiple=8, ocr=False), dataset)
        build_cache(json.loads(dataset.read_text()), str(builtin.paths()[0]), work / "cache")
    return dataset, work


def _lora(out: Path, name: str, keep: int | None, mark: bool, steps: int, lr: float) -> Path:
    from weightshop.train import load_config, train

    dataset, work = _train_set(out, name, keep, mark)
    cfg = load_config(base={
        "model": {"raw": str(builtin.paths()[0]), "turbo": str(builtin.paths()[1])},
        "data": {"manifest": str(dataset), "cache": str(work / "cache"), "caption_dropout": 0.1},
        "lora": {"rank": 64, "targets": "all-linear"}, "schedule": {"steps": steps, "batch_size": 4},
        "optim": {"lr": lr}, "output": {"dir": str(work / "run"), "name": name, "save_every": 200}})
    return Path(train(cfg)["lora"])


def lora_case(out: Path, name: str, keep: int | None, mark: bool, steps: int, lr: float) -> dict:
    from weightshop.transfer.training_images import load_training_images

    lora = _lora(out, name, keep, mark, steps, lr)
    dataset, _ = _train_set(out, name, keep, mark)
    pair = load_pair(*builtin.paths()[:2], dtype="fp32")
    result = evaluate_lora(lora, out / name / "eval", pair=pair, suite=nano_suite("star", subject=16, plain=8),
                           concept="star", train_images=load_training_images(dataset), batch_size=24, real=False)
    return {"verdict": result["verdict"]["headline"], "flags": result["verdict"]["flags"],
            "checks": {k: {kk: vv for kk, vv in v.items() if kk != "memorisation"} | (
                {"memorisation_rate": v["memorisation"]["rate"]} if "memorisation" in v else {})
                for k, v in result["checks"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", choices=["aa", "degrade", "memorise", "mark"])
    parser.add_argument("--workdir", default="/tmp/planted")
    args = parser.parse_args()
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "planted.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for case in args.cases:
        start = time.perf_counter()
        if case == "aa":
            results[case] = aa(out)
        elif case == "degrade":
            results[case] = degrade(out)
        elif case == "memorise":
            results[case] = lora_case(out, "memorise", keep=4, mark=False, steps=800, lr=1e-3)
        else:
            results[case] = lora_case(out, "mark", keep=None, mark=True, steps=600, lr=1e-3)
        results[case]["seconds"] = time.perf_counter() - start
        path.write_text(json.dumps(results, indent=1, default=str))
        print(case, json.dumps(results[case], default=str)[:2000], flush=True)


if __name__ == "__main__":
    main()
