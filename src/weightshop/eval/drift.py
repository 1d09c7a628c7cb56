"""What a quantized transformer costs in image quality: its drift from the full-precision reference, measured with
the judges that gate LoRAs, on the same suite and seeds, with and without a LoRA.

For each format the transformer is exported (`weightshop.models.quantized`), loaded back the way a user would load
the file, and the suite is rendered on it. Each image pairs with the reference image of the same prompt and seed:

- pixels: paired PSNR and SSIM (luminance), per pair and their means;
- features: the paired cosine distance of the EfficientNet-Lite0 features (the harness's feature extractor), and
  the distribution distance (KID) between the two image sets;
- the judges: every per-image metric gated as `weightshop eval gate` gates a LoRA (a paired bootstrap interval;
  regressed when the mean moved the wrong way by more than the tolerance and the interval excludes zero). The probe's
  adherence delta is one of these rows. The gate's verdict is the format's verdict;
- weights: the per-layer relative weight error, the file's size against the reference's, the transformer's
  resident bytes;
- the worst pairs (lowest PSNR) side by side.

LPIPS, the metric of the published Krea 2 drift figures, needs torchvision's networks, which weightshop does not
import; the feature distance stands in for it, and PSNR is comparable as it is.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from weightshop.errors import WeightshopError
from weightshop.eval.gate import gate
from weightshop.eval.generation import LoraUse
from weightshop.eval.harness import EvalRun, evaluate
from weightshop.eval.suites import Suite
from weightshop.io import atomic_write_json

# Krea 2 Turbo against bf16 over 96 seed pairs, as published (../shared/reference/KREA2.md): the anchor a reader
# holds our figures against. Sizes in GB of the full-size transformer file.
PUBLISHED_DRIFT = (
    {"format": "int8 (ConvRot)", "lpips": 0.066, "psnr": 27.7},
    {"format": "MXFP8", "lpips": 0.115, "psnr": 24.0},
    {"format": "fp8_scaled", "lpips": 0.120, "psnr": 23.6},
)
PUBLISHED_SIZES_GB = {"fp8": 13.1, "q8_0": 13.7, "nvfp4": 7.7}
PUBLISHED_SOURCE = "Krea 2 Turbo vs bf16, 96 seed pairs (published; KREA2.md)"

# A pair of identical images has infinite PSNR; it counts as this many dB in a mean, so one exact pair does not
# make every mean infinite (and 100 dB is far above any visible difference: an 8-bit image's last step is 48 dB).
PSNR_CAP = 100.0
# How far a judge's per-image metric may drop (in its own units: rates, so 0.03 is 3 points) before a format's
# drift fails the gate, when no tolerances are given.
DEFAULT_TOLERANCE = 0.03
WORST_K = 8
Progress = Callable[[str, int, int], None]


@dataclass
class DriftRow:
    """One format (or the reference) with or without the LoRA, against the reference in the same setting."""

    format: str
    lora: bool
    psnr: float  # mean over pairs, identical pairs counted as PSNR_CAP
    psnr_min: float
    ssim: float
    feature_distance: float  # mean paired cosine distance of the image features
    kid: float | None  # KID between the two image sets (None without features)
    gate_passed: bool | None  # None when no judge metric could be gated
    adherence_delta: float | None  # candidate - reference, the probe's adherence (or the first adherence metric)
    adherence_lo: float | None
    adherence_hi: float | None
    pairs: int
    seconds_per_image: float | None
    worst: list[dict] = field(default_factory=list)  # the lowest-PSNR pairs: id, position, psnr, files
    gate: dict | None = None


def pair_images(reference: EvalRun, candidate: EvalRun) -> list[tuple[dict, dict]]:
    """The (reference image, candidate image) records of the same prompt and seed position."""
    ref = {(im["id"], im["position"]): im for im in reference.images}
    pairs = [(ref[key], im) for im in candidate.images if (key := (im["id"], im["position"])) in ref]
    if not pairs:
        raise WeightshopError("the reference and the quantized run share no (prompt, seed): render the same suite")
    return pairs


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def paired_pixels(pairs: list[tuple[dict, dict]]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: PSNR (capped at PSNR_CAP) and SSIM of the two images."""
    from weightshop.judge.stats import psnr, ssim

    p, s = [], []
    for ref, cand in pairs:
        a, b = _pixels(ref["file"]), _pixels(cand["file"])
        p.append(min(psnr(a, b), PSNR_CAP))
        s.append(ssim(a, b) if min(a.shape[:2]) >= 11 else float("nan"))
    return np.array(p), np.array(s)


def paired_features(reference: EvalRun, candidate: EvalRun,
                    pairs: list[tuple[dict, dict]]) -> tuple[np.ndarray | None, float | None]:
    """Per pair: the features' cosine distance; and KID between the two runs' image sets (None without features)."""
    from weightshop.judge.stats import kid, paired_feature_distance

    fa, fb = reference.features(), candidate.features()
    if fa is None or fb is None:
        return None, None
    row_a = {(im["id"], im["position"]): i for i, im in enumerate(reference.images)}
    row_b = {(im["id"], im["position"]): i for i, im in enumerate(candidate.images)}
    keys = [(c["id"], c["position"]) for _, c in pairs]
    a, b = fa[[row_a[k] for k in keys]], fb[[row_b[k] for k in keys]]
    distances = paired_feature_distance(a, b)
    kid_value = kid(a, b, subsets=50, rng=np.random.default_rng(0))[0] if len(keys) >= 2 else None
    return distances, kid_value


def _adherence(rows: list[dict]) -> dict | None:
    """The gate row of the prompt-adherence metric (the probe's first), the "probe adherence delta"."""
    for row in sorted(rows, key=lambda r: not r["metric"].startswith("probe.")):
        if row["metric"].endswith(".adherence"):
            return row
    return None


def drift_row(label: str, reference: EvalRun, candidate: EvalRun, *, lora: bool = False,
              tolerances: dict[str, float] | None = None, worst_k: int = WORST_K) -> DriftRow:
    """`candidate`'s drift from `reference` (two runs of one suite, same seeds), as the module docstring says."""
    pairs = pair_images(reference, candidate)
    p, s = paired_pixels(pairs)
    distances, kid_value = paired_features(reference, candidate, pairs)
    metrics = sorted(set(reference.metric_names()) & set(candidate.metric_names()))
    tol = {m: DEFAULT_TOLERANCE for m in metrics} | dict(tolerances or {})
    try:
        verdict = gate(candidate, reference, tol).as_dict()
    except WeightshopError:  # no judge metric both runs have: report the pixels and features alone
        verdict = None
    adherence = _adherence(verdict["rows"]) if verdict else None
    order = np.argsort(p)[:worst_k]
    worst = [{"id": pairs[i][1]["id"], "position": pairs[i][1]["position"], "prompt": pairs[i][1]["prompt"],
              "psnr": float(p[i]), "reference_file": pairs[i][0]["file"], "candidate_file": pairs[i][1]["file"]}
             for i in order]
    return DriftRow(
        format=label, lora=lora, psnr=float(p.mean()), psnr_min=float(p.min()),
        ssim=float(np.nanmean(s)) if np.isfinite(s).any() else float("nan"),
        feature_distance=float(distances.mean()) if distances is not None else float("nan"), kid=kid_value,
        gate_passed=None if verdict is None else verdict["passed"],
        adherence_delta=adherence["diff"] if adherence else None,
        adherence_lo=adherence["lo"] if adherence else None, adherence_hi=adherence["hi"] if adherence else None,
        pairs=len(pairs), seconds_per_image=candidate.seconds_per_image, worst=worst, gate=verdict)


# ---------------------------------------------------------------------------------------------------------------
# The whole measurement: export each format, load it back, render, compare.


@dataclass
class FormatResult:
    format: str
    path: str
    file_bytes: int
    reference_bytes: int
    resident_bytes: int  # the transformer's bytes in memory once loaded (quantized Linears at their stored size)
    quantized_layers: int
    kept_layers: list[str]
    layer_errors: dict[str, float]  # layer -> relative weight error (Frobenius)
    rows: list[DriftRow]
    peak_bytes: int | None = None  # measured peak of one generation, when measured

    @property
    def passed(self) -> bool | None:
        verdicts = [r.gate_passed for r in self.rows]
        return None if all(v is None for v in verdicts) else all(v is not False for v in verdicts)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _runs(model, suite: Suite, out: Path, judges: list, loras: list[LoraUse], cache: Path, trigger: str | None,
          batch_size: int, progress: Progress, label: str) -> dict[bool, EvalRun]:
    """The suite on `model` without the LoRAs and (when given) with them."""
    runs = {}
    for with_lora in ((False, True) if loras else (False,)):
        name = f"{label}{'+lora' if with_lora else ''}"
        runs[with_lora] = evaluate(model, suite, out / "runs" / name, judges=judges,
                                   loras=loras if with_lora else (), trigger=trigger if with_lora else None,
                                   cache_dir=cache, ocr=False, batch_size=batch_size,
                                   progress=lambda d, t, name=name: progress(f"render {name}", d, t))
    return runs


def measure_drift(model, formats: list[str], out_dir: str | Path, *, suite: Suite, judges: list,
                  components: str | Path | None = None, checkpoint: str | None = None,
                  keep: list[str] | None = None, loras: list[LoraUse] = (), trigger: str | None = None,
                  tolerances: dict[str, float] | None = None, dtype: str = "auto", device: str = "cpu",
                  batch_size: int = 1, worst_k: int = WORST_K, progress: Progress | None = None) -> dict:
    """Quantize `model`'s transformer (a path, hub id or built-in name; or a loaded model) to each of `formats`
    (files in out_dir), measure each one's drift against the unquantized model on `suite` (with and without
    `loras`), and write drift.json and report.html in out_dir."""
    from weightshop.models.loading import SharedComponents, load_model
    from weightshop.models.quantized import export_transformer
    from weightshop.quant.formats import get_format
    from weightshop.quant.layers import weight_bytes

    for name in formats:
        if not get_format(name).is_file:
            raise WeightshopError(f"format {name!r} exists only in memory (training's base): a drift report "
                                  f"measures a file format")
    out = Path(out_dir)
    progress = progress or (lambda *_: None)
    cache = out / "image-cache"
    loras = list(loras)
    start = time.perf_counter()
    if hasattr(model, "pipeline"):  # an already loaded model (the demo's): its weights are the reference
        reference = model
        model, components = reference.source.transformer, reference.source.components
    else:
        reference = load_model(model, components=components, checkpoint=checkpoint, dtype=dtype, device=device)
    pipe = reference.pipeline
    shared = SharedComponents(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.text_encoder_select_layers,
                              reference.source.components)
    reference_runs = _runs(reference, suite, out, judges, loras, cache, trigger, batch_size, progress, "reference")
    reference_bytes = weight_bytes(pipe.transformer)
    reference_peak = generation_peak(reference, suite)
    results = []
    for name in formats:
        fmt = get_format(name)
        progress(f"export {name}", 0, 1)
        exported = export_transformer(model, name, out / f"transformer-{name}{fmt.suffix}", components=components,
                                      keep=keep)
        progress(f"export {name}", 1, 1)
        candidate = load_model(exported.path, components=reference.source.components,
                               checkpoint=reference.checkpoint.name, dtype=dtype, device=device, shared=shared)
        runs = _runs(candidate, suite, out, judges, loras, cache, trigger, batch_size, progress, name)
        rows = [drift_row(name, reference_runs[with_lora], run, lora=with_lora, tolerances=tolerances,
                          worst_k=worst_k) for with_lora, run in runs.items()]
        results.append(FormatResult(
            format=name, path=str(exported.path), file_bytes=exported.file_bytes,
            reference_bytes=exported.source_bytes, resident_bytes=weight_bytes(candidate.pipeline.transformer),
            quantized_layers=len(exported.quantized), kept_layers=list(exported.kept),
            layer_errors=dict(exported.errors), rows=rows, peak_bytes=generation_peak(candidate, suite)))
        del candidate
        gc.collect()
    summary = {
        "model": reference.source.model_id, "checkpoint": reference.checkpoint.name, "suite": suite.name,
        "pairs": results[0].rows[0].pairs if results else 0, "loras": [l.as_dict() for l in loras],
        "reference_resident_bytes": reference_bytes, "reference_peak_bytes": reference_peak, "formats": [r.as_dict() for r in results],
        "published": {"source": PUBLISHED_SOURCE, "drift": list(PUBLISHED_DRIFT), "sizes_gb": PUBLISHED_SIZES_GB},
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(out / "drift.json", summary)
    summary["report"] = str(write_drift_report(summary, out / "report.html"))
    atomic_write_json(out / "drift.json", summary)
    return summary


def generation_peak(model, suite: Suite) -> int:
    """The measured peak memory of one image at the suite's size (`generate.memory.measure_generation`: the device
    allocator's peak on CUDA; on CPU the pipeline's weights plus the peak the call adds)."""
    from weightshop.generate import GenerateRequest
    from weightshop.generate.memory import measure_generation

    request = GenerateRequest(prompts=[suite.prompts[0].prompt], seeds=[0], width=suite.width, height=suite.height)
    return int(measure_generation(model, request)["peak"])


def table_rows(summary: dict) -> list[dict]:
    """One line per format and setting, as the CLI prints and the report shows it."""
    rows = []
    for f in summary["formats"]:
        for r in f["rows"]:
            rows.append({
                "format": f["format"], "lora": "yes" if r["lora"] else "no",
                "file MB": round(f["file_bytes"] / 1e6, 2),
                "peak vs ref": None if not f.get("peak_bytes") or not summary.get("reference_peak_bytes") else
                round(f["peak_bytes"] / summary["reference_peak_bytes"], 3),
                "size vs ref": round(f["file_bytes"] / max(f["reference_bytes"], 1), 3),
                "max layer err": round(max(f["layer_errors"].values(), default=0.0), 4),
                "PSNR dB": round(r["psnr"], 2), "SSIM": round(r["ssim"], 4),
                "feature dist": round(r["feature_distance"], 5),
                "KID": None if r["kid"] is None else round(r["kid"], 5),
                "adherence delta": None if r["adherence_delta"] is None else round(r["adherence_delta"], 4),
                "gate": {True: "pass", False: "FAIL", None: "n/a"}[r["gate_passed"]],
            })
    return rows


def drift_plot(summary: dict, width: int = 720) -> Image.Image:
    """Mean PSNR per format and setting as bars, the published Krea 2 Turbo figures as grey bars beneath."""
    ours = [(f"{f['format']}{' +LoRA' if r['lora'] else ''}", r["psnr"], r["gate_passed"])
            for f in summary["formats"] for r in f["rows"]]
    anchors = [(f"published {a['format']}", a["psnr"], "anchor") for a in summary["published"]["drift"]]
    bars = ours + anchors
    left, right, step = 190, 50, 22
    img = Image.new("RGB", (width, 34 + step * len(bars)), "white")
    draw = ImageDraw.Draw(img)
    top = max([v for _, v, _ in bars if math.isfinite(v)] + [1.0]) * 1.1
    draw.text((6, 4), "mean paired PSNR against the reference, dB (higher: closer)", fill="black")
    for i, (label, value, status) in enumerate(bars):
        y = 28 + step * i
        colour = {True: (44, 160, 44), False: (214, 39, 40), None: (31, 119, 180), "anchor": (170, 170, 170)}[status]
        x1 = left + (min(value, top) / top) * (width - left - right)
        draw.text((6, y + 2), label[:30], fill="black")
        draw.rectangle([left, y, x1, y + step - 6], fill=colour)
        draw.text((x1 + 4, y + 2), f"{value:.1f}", fill="black")
    return img


def layer_error_plot(summary: dict, width: int = 720, height: int = 220) -> Image.Image:
    """Each format's per-layer relative weight error, layers in file order, one line per format (log scale)."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), "relative weight error per quantized layer (log scale)", fill="black")
    series = [(f["format"], list(f["layer_errors"].values())) for f in summary["formats"] if f["layer_errors"]]
    values = [v for _, vs in series for v in vs if v > 0]
    if not values:
        return img
    lo, hi = math.log10(min(values)), math.log10(max(values)) + 1e-9
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    left, bottom, top = 50, height - 20, 22
    draw.text((2, top), f"{10 ** hi:.0e}", fill="black")
    draw.text((2, bottom - 10), f"{10 ** lo:.0e}", fill="black")
    for k, (name, vs) in enumerate(series):
        colour = palette[k % len(palette)]
        pts = [(left + i * (width - left - 10) / max(len(vs) - 1, 1),
                bottom - (math.log10(max(v, 10 ** lo)) - lo) / max(hi - lo, 1e-9) * (bottom - top))
               for i, v in enumerate(vs)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.text((width - 120, top + 12 * k), name, fill=colour)
    return img


def write_drift_report(summary: dict, out: Path) -> Path:
    from weightshop.report import data_uri, image_grid, table_html, write_html

    def img(image: Image.Image) -> str:
        return f"<img src='{data_uri(image)}'>"

    def opened(path: str) -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")

    published = [{"format": a["format"], "LPIPS": a["lpips"], "PSNR dB": a["psnr"]}
                 for a in summary["published"]["drift"]]
    sizes = ", ".join(f"{k} {v} GB" for k, v in summary["published"]["sizes_gb"].items())
    sections = [
        ("Drift", f"<p>{summary['model']} ({summary['checkpoint']}), suite {summary['suite']}, {summary['pairs']} "
                  "paired images per setting, each format against the unquantized model with the same seeds.</p>"
                  + table_html(table_rows(summary)) + img(drift_plot(summary))),
        ("Anchor: the published figures", f"<p>{summary['published']['source']}. Sizes: {sizes}. LPIPS is not "
                                          "measured here (its networks need torchvision); the feature distance "
                                          "stands in for it. The anchor is the full-size model at 1024 px: a small "
                                          "model at a small size (krea2-nano's 64 px) drifts far less in PSNR, so "
                                          "compare the formats' order and ratios, not the dB.</p>"
                                          + table_html(published)),
        ("Weights", img(layer_error_plot(summary)) + table_html([
            {"format": f["format"], "quantized layers": f["quantized_layers"], "kept": len(f["kept_layers"]),
             "file MB": round(f["file_bytes"] / 1e6, 2), "resident MB": round(f["resident_bytes"] / 1e6, 2),
             "reference resident MB": round(summary["reference_resident_bytes"] / 1e6, 2),
             "peak MB": None if f.get("peak_bytes") is None else round(f["peak_bytes"] / 1e6, 1),
             "reference peak MB": None if summary.get("reference_peak_bytes") is None else
             round(summary["reference_peak_bytes"] / 1e6, 1)}
            for f in summary["formats"]])),
    ]
    for f in summary["formats"]:
        for r in f["rows"]:
            if not r["worst"]:
                continue
            grid = image_grid([[opened(w["reference_file"]) for w in r["worst"]],
                               [opened(w["candidate_file"]) for w in r["worst"]]],
                              row_labels=["reference", f["format"]], cell=96)
            sections.append((f"Worst pairs: {f['format']}{' with the LoRA' if r['lora'] else ''}",
                             img(grid) + "<p>" + ", ".join(f"{w['psnr']:.1f} dB" for w in r["worst"]) + "</p>"))
    return write_html(out, "weightshop quantize: drift report", sections)
