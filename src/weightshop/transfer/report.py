"""What a transfer run leaves in its folder: grid.png, plot.png, transfer.json, transfer.html, comfyui/."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image

from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_json
from weightshop.report import data_uri, image_grid, table_html, write_html
from weightshop.judge import ADHERENCE, CONCEPT


def comparison_grid(report, columns: int = 16) -> Image.Image:
    """Rows: settings (report order); columns: the first `columns` prompt x seed jobs."""
    rows = [r.images[:columns] for r in report.results]
    labels = [f"p{list(dict.fromkeys(j.prompt for j in report.jobs)).index(j.prompt) + 1} s{j.seed}"
              for j in report.jobs[:columns]]
    side = max(rows[0][0].size)
    return image_grid(rows, row_labels=[r.setting.label for r in report.results], col_labels=labels,
                      cell=96 if side <= 96 else 160)


def strength_plot(report) -> Image.Image:
    from weightshop.transfer.plot import score_plot

    strengths = [row["strength"] for row in report.sweep]
    series = {"concept, Turbo + LoRA": [row[CONCEPT] for row in report.sweep]}
    turbo_alone = report.result("Turbo alone").metrics
    levels = {"concept, Raw + LoRA": report.result("Raw + LoRA").metrics[CONCEPT],
              "concept, Turbo alone": turbo_alone[CONCEPT]}
    if all(row[ADHERENCE] is not None for row in report.sweep) and ADHERENCE in turbo_alone:
        series["adherence, Turbo + LoRA"] = [row[ADHERENCE] for row in report.sweep]
        levels[f"adherence floor (-{report.tolerance_points:g} pt)"] = (
            turbo_alone[ADHERENCE] - report.tolerance_points / 100)
    title = f"{report.scorers[0]} scores vs strength" + (f" (concept: {report.concept})" if report.concept else "")
    return score_plot(strengths, series, levels, marker=report.recommended_strength, title=title)


def export_comfyui(report, out: Path, turbo_model) -> dict:
    """comfyui/workflow_api.json (Turbo + the LoRA at the recommended strength) and the LoRA in ComfyUI's names."""
    from weightshop.transfer.comfyui import turbo_lora_workflow, validate_workflow

    try:
        from weightshop.lora.formats import convert_file
    except ImportError:
        return {"error": "weightshop.lora.formats is not installed in this build: no ComfyUI LoRA was written"}
    folder = out / "comfyui"
    source = Path(report.lora["path"])
    try:
        lora_file = Path(convert_file(source, folder / f"{source.stem}_comfyui.safetensors", to="comfyui"))
    except WeightshopError as e:
        return {"error": f"the LoRA could not be converted to ComfyUI's layout: {e}"}
    size = turbo_model.default_size
    first = report.jobs[0]
    workflow = turbo_lora_workflow(lora_file.name, report.recommended_strength, first.prompt, seed=first.seed,
                                   width=size, height=size, family=turbo_model.family)
    problems = validate_workflow(workflow)
    if problems:  # the builder and the checker disagree: a bug here, not bad input
        raise RuntimeError("generated ComfyUI workflow is invalid: " + "; ".join(problems))
    path = atomic_write_json(folder / "workflow_api.json", workflow)
    return {"workflow": str(path), "lora": str(lora_file), "strength": report.recommended_strength}


def _headline(report) -> str:
    r = report.recommendation
    ratio = "undefined (Raw + LoRA shows none of the concept)" if report.transfer_ratio is None \
        else f"{report.transfer_ratio:.2f}"
    at_1 = "" if report.ratio_at_1 is None else f" At strength 1 the ratio is {report.ratio_at_1:.2f}."
    flag = "" if r.within_tolerance else " <b>No strength met the adherence tolerance.</b>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    return (f"<p><b>Recommended Turbo strength: {r.strength:g}</b>; transfer ratio there: <b>{ratio}</b> "
            f"(Turbo's concept score over Raw's, the LoRA on both).{at_1}{flag}</p>"
            f"<p>Why: {html.escape(r.reason)}.</p>" + (f"<ul>{notes}</ul>" if notes else ""))


def write_report(report, out: Path, turbo_model, *, comfyui: bool = True, grid_columns: int = 16) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    grid, plot = comparison_grid(report, grid_columns), strength_plot(report)
    grid.save(out / "grid.png")
    plot.save(out / "plot.png")
    report.files = {"grid": str(out / "grid.png"), "plot": str(out / "plot.png"),
                    "json": str(out / "transfer.json"), "html": str(out / "transfer.html")}
    if comfyui:
        report.comfyui = export_comfyui(report, out, turbo_model)
    atomic_write_json(out / "transfer.json", report.as_dict())
    prompts = list(dict.fromkeys(j.prompt for j in report.jobs))
    comfy = report.comfyui
    comfy_html = ("<p>Not exported.</p>" if not comfy else
                  f"<p>{html.escape(comfy['error'])}</p>" if "error" in comfy else
                  f"<p><code>{html.escape(comfy['workflow'])}</code>: API-format workflow (POST it to ComfyUI's "
                  f"/prompt as {{\"prompt\": ...}}) for Turbo + this LoRA at strength {comfy['strength']:g}; "
                  f"<code>{html.escape(comfy['lora'])}</code>: the LoRA in ComfyUI's names, for models/loras/.</p>")
    write_html(out / "transfer.html", f"LoRA transfer: {Path(report.lora['path']).name}", [
        ("Result", _headline(report)),
        ("Settings", table_html([r.as_dict() for r in report.results])),
        ("Strength sweep on Turbo", table_html(report.sweep)),
        ("Score vs strength", f"<img src='{data_uri(plot)}'>"),
        ("Images (rows: settings; columns: prompt x seed)",
         f"<img src='{data_uri(grid)}'><ol>" + "".join(f"<li>{html.escape(p)}</li>" for p in prompts) + "</ol>"),
        ("ComfyUI", comfy_html),
        ("Provenance", table_html([{"field": k, "value": v} for k, v in {
            **{f"lora.{k}": v for k, v in report.lora.items()}, **{f"model.{k}": v for k, v in report.models.items()},
            "scorers": ", ".join(report.scorers), "steps": report.steps,
            "tolerance (points)": report.tolerance_points, "seconds": round(report.seconds, 1)}.items()])),
    ])
    return report.files
