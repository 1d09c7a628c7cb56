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
    for name in (report.judges or {}).get("agreement", {}):  # a second judge of the concept: its curve too
        series[f"{name} concept, Turbo + LoRA"] = [report.result(f"Turbo + LoRA {row['strength']:g}").metrics.get(
            f"{name}.{CONCEPT}") for row in report.sweep]
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
            f"<p>Why: {html.escape(r.reason)}.</p>" + _ratio_by_judge(report)
            + (f"<ul>{notes}</ul>" if notes else ""))


def _ratio(value) -> str:
    return "undefined" if value is None else f"{value:.2f}"


def _ratio_by_judge(report) -> str:
    """The headline ratio as each judge reads it, when more than one judge scores the concept."""
    judges = report.judges or {}
    figures = judges.get("figures", {})
    if len(figures) < 2:
        return ""
    parts = ", ".join(f"{html.escape(name)} {_ratio(f['transfer_ratio'])}" for name, f in figures.items())
    flags = [name for name, pair in judges.get("agreement", {}).items() if pair["transfer_ratio"]["flag"]]
    verdict = (f" <b>{html.escape(judges['first'])} and {html.escape(', '.join(flags))} part by more than the "
               f"{judges['margin_points']:g}-point margin.</b>" if flags else
               f" The judges of the concept agree within the {judges['margin_points']:g}-point margin."
               if judges.get("agreement") else "")
    return (f"<p>Transfer ratio at that strength by judge: {parts} (the recommendation follows "
            f"{html.escape(judges['first'])}).{verdict}</p>")


def judges_table(report) -> list[dict]:
    """One row per setting and second judge: both judges' concept rates, how often they agree, and the flag."""
    judges = report.judges or {}
    first = judges.get("first")
    rows = []
    for name, pair in judges.get("agreement", {}).items():
        for label, a in pair["settings"].items():
            rows.append({"setting": label, f"{first} concept": a["rate_a"], f"{name} concept": a["rate_b"],
                         "agree": a["agreement"], f"only {first}": a["only_a"], f"only {name}": a["only_b"],
                         "difference (points)": round(100 * a["difference"], 1), "flag": "PARTED" if a["flag"] else ""})
    return rows


def _judges_section(report) -> str:
    judges = report.judges or {}
    if not judges.get("agreement"):
        return ""
    first = judges["first"]
    lines = []
    for name, pair in judges["agreement"].items():
        f0, f1 = judges["figures"][first], judges["figures"][name]
        for what, key in (("at the recommended strength", "transfer_ratio"), ("at strength 1", "ratio_at_1")):
            part = pair[key]
            lines.append(f"<li>Transfer ratio {what}: {html.escape(first)} {_ratio(f0[key])}, {html.escape(name)} "
                         f"{_ratio(f1[key])}" + (" <b>(parted: more than the margin)</b>" if part["flag"] else "")
                         + "</li>")
    identities = "".join(f"<li>{html.escape(n)}: {html.escape(i['backend'])}, version {html.escape(i['version'])}"
                         + (f", weights sha256 {html.escape(i['weights_sha256'][:12])}" if i["weights_sha256"] else "")
                         + "</li>" for n, i in judges["identities"].items())
    return (f"<p>The concept is judged twice: by {html.escape(first)} (the recommendation and the headline follow it) "
            f"and by a judge that shares nothing with it. Agree: the fraction of images where both see the concept or "
            f"both do not. A setting is flagged when the two rates part by more than {judges['margin_points']:g} "
            f"points (about two standard errors of the difference at the demo's size; docs/transfer.md, "
            f"\"Two judges\").</p><ul>{''.join(lines)}</ul>" + table_html(judges_table(report))
            + f"<p>Judges:</p><ul>{identities}</ul>")


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
        *([("Two judges of the concept", _judges_section(report))] if _judges_section(report) else []),
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
