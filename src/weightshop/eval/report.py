"""The pages a person reads: the verdicts at the top, the metric table with intervals, grids of the four runs,
the images that moved most, the memorised pairs, and an interval plot. Images are inlined (one file to share)."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image, ImageDraw

from weightshop.eval.harness import EvalRun, load_images
from weightshop.report import data_uri, image_grid, table_html, write_html

GRID_COLUMNS = 12


def interval_plot(rows: list[dict], title: str, width: int = 720) -> Image.Image:
    """One line per metric: the paired difference's interval (candidate - baseline) as a bar, the mean as a dot,
    the tolerance band in grey, zero marked; red when regressed."""
    rows = [r for r in rows if r.get("status") != "not gated"] or rows
    height, left, right = 28 + 22 * len(rows), 230, 30
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    span = max([abs(v) for r in rows for v in (r["lo"], r["hi"], r["tolerance"])] + [1e-6]) * 1.15

    def x(v: float) -> float:
        return left + (v + span) / (2 * span) * (width - left - right)

    draw.text((6, 4), title, fill="black")
    draw.line([(x(0), 20), (x(0), height - 4)], fill=(120, 120, 120))
    for i, r in enumerate(rows):
        y = 30 + 22 * i
        draw.text((6, y - 6), r["metric"][:34], fill="black")
        if r["tolerance"]:
            draw.rectangle([x(-r["tolerance"]), y - 7, x(r["tolerance"]), y + 7], fill=(232, 232, 232))
        colour = (214, 39, 40) if r["status"] == "regressed" else (44, 160, 44) if r["status"] == "improved" else (31, 119, 180)
        draw.line([(x(r["lo"]), y), (x(r["hi"]), y)], fill=colour, width=3)
        draw.ellipse([x(r["diff"]) - 4, y - 4, x(r["diff"]) + 4, y + 4], fill=colour)
    return img


def _img(image: Image.Image) -> str:
    return f"<img src='{data_uri(image)}'>"


def _open(path: str) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def gate_section(gate: dict) -> str:
    verdict = "<b style='color:green'>PASS</b>" if gate["passed"] else "<b style='color:#c00'>FAIL</b>"
    body = f"<p>{verdict}: {sum(r['status'] == 'regressed' for r in gate['rows'])} metric(s) regressed.</p>"
    body += _img(interval_plot(gate["rows"], "candidate - baseline, paired, with its interval (grey: tolerance)"))
    body += table_html([{k: r[k] for k in ("metric", "baseline", "candidate", "diff", "lo", "hi", "tolerance", "n",
                                             "status")} for r in gate["rows"]])
    if gate["moved"]:
        pairs = gate["moved"][:GRID_COLUMNS]
        grid = image_grid([[_open(m["baseline_file"]) for m in pairs], [_open(m["candidate_file"]) for m in pairs]],
                          row_labels=["baseline", "candidate"], cell=96)
        body += "<p>The images that moved most the wrong way:</p>" + _img(grid)
    body += "".join(f"<p>note: {html.escape(n)}</p>" for n in gate["notes"])
    return body


def write_gate_report(gate: dict, out: Path, title: str = "weightshop eval gate") -> Path:
    return write_html(out, title, [("Gate", gate_section(gate))])


def write_run_report(run: EvalRun, out: Path) -> Path:
    images = load_images(run)
    rows = [{"metric": m, **{k: s[k] for k in ("mean", "lo", "hi", "n")}} for m, s in run.summary.items()]
    sections = [
        ("Run", f"<p>{html.escape(run.model['name'])} ({run.model['checkpoint']}), suite {html.escape(run.suite['name'])}"
                f", {len(run.images)} images, LoRAs: {html.escape(str(run.loras) or 'none')}</p>"),
        ("Metrics (mean and 95 % bootstrap interval)", table_html(rows)),
        ("Set-level figures", table_html([{k: v for k, v in run.set_metrics.items()}]) if run.set_metrics else "<p>none</p>"),
        ("Images", _img(image_grid([images[i:i + GRID_COLUMNS] for i in range(0, min(len(images), 48), GRID_COLUMNS)],
                                   cell=96))),
    ]
    if run.skipped:
        sections.append(("Skipped", "".join(f"<p>{html.escape(s)}</p>" for s in run.skipped)))
    return write_html(out, f"weightshop eval: {run.model['name']}", sections)


def write_lora_report(result: dict, runs: dict[str, EvalRun], out: Path,
                      references: list[Image.Image] | None = None) -> Path:
    v = result["verdict"]
    top = f"<p style='font-size:1.3em'><b>{html.escape(v['headline'])}</b></p>"
    top += "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in v["reasons"]) + "</ul>"
    if v["flags"]:
        top += "<p><b>Flags</b></p><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in v["flags"]) + "</ul>"
    gate = result["gate"]
    if gate:
        top += f"<p>Gate (Turbo + LoRA vs Turbo on the prompts without the trigger): " \
               f"{'pass' if gate['passed'] else 'FAIL'}</p>"
    top += table_html(v["options"])
    names = list(runs)
    metrics = sorted({m for run in runs.values() for m in run.summary})
    table = [{"metric": m, **{n: runs[n].summary.get(m, {}).get("mean") for n in names}} for m in metrics]
    table += [{"metric": k, **{n: runs[n].set_metrics.get(k) for n in names}}
              for k in sorted({k for run in runs.values() for k in run.set_metrics})]
    images = {n: load_images(run) for n, run in runs.items()}
    count = min(GRID_COLUMNS, len(images[names[0]]))
    sections = [("Verdict", top), ("Metrics per run (means)", table_html(table)),
                ("Grid: the same prompts and seeds on each run",
                 _img(image_grid([images[n][:count] for n in names], row_labels=names, cell=96)))]
    if gate:
        sections.append(("Gate", gate_section(gate)))
    for checkpoint, found in result["checks"].items():
        memo = found.get("memorisation")
        if memo and memo["copies"]:
            run = runs[f"{checkpoint}+lora"]
            pairs = memo["copies"][:GRID_COLUMNS]
            gen, refs = load_images(run), references
            grid = image_grid([[gen[c["image"]] for c in pairs], [refs[c["training_image"]] for c in pairs]]
                              if refs else [[gen[c["image"]] for c in pairs]], row_labels=["generated", "training"]
                              if refs else ["generated"], cell=96)
            sections.append((f"Memorisation on {checkpoint}: nearest-training-image pairs", _img(grid)))
        sections.append((f"Checks on {checkpoint}", table_html([{k: str(v) for k, v in found.items()
                                                                  if k not in ("memorisation",)}])))
    if result.get("agreement"):
        sections.append(("Two judges: agreement on the concept", table_html(
            [{"run": n, **a} for n, a in result["agreement"].items()])))
    if result["skipped"]:
        sections.append(("Skipped", "".join(f"<p>{html.escape(s)}</p>" for s in result["skipped"])))
    return write_html(out / "report.html", "weightshop eval: " + Path(result["lora"]["path"]).name, sections)
