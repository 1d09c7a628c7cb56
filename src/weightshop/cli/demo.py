from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weightshop.cli.common import JSON_OPTION, console, emit, guarded, step_progress


@guarded
def demo(
    workdir: Path = typer.Option(Path("weightshop-out/demo"), help="Where models, images and the report go."),
    quick: bool = typer.Option(False, "--quick", help="Every stage at plumbing size (2 prompts, a few training "
                               "steps): checks the loop runs in about a minute; its figures mean nothing."),
    concept: str = typer.Option(None, help="The held-out concept the LoRA learns: star (a new shape, the default) "
                                "or striped (a fill finer than the nano VAE can reproduce: the probe's hit rate "
                                "for it counts a hazy fill)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the loop on the embedded model, offline on CPU, and print where the report is."""
    from weightshop.demo import run_demo

    with step_progress("demo") as progress:
        summary = run_demo(workdir, progress, quick=quick, **({"concept": concept} if concept else {}))
    emit(summary, as_json)
    table = Table(title=f"generate on {summary['model']}")
    rows = summary["stages"]["generate"]["table"]
    # The headline columns (every metric is in the HTML report and --json).
    columns = [c for c in ("setting", "acc_shape", "acc_colour", "acc_shape2", "acc_colour2", "all_correct",
                           "seconds_per_image") if c in rows[0]]
    for col in columns:
        table.add_column(col.removeprefix("acc_"))
    for row in rows:
        table.add_row(*(f"{row.get(c):.3g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))
    console.print(table)
    generated = summary["stages"]["generate"]
    console.print(f"Turbo is {generated['turbo_speedup']:.1f}x faster per image than Raw; "
                  f"demo took {summary['seconds']:.0f} s")
    speed = generated["vs_stock"]
    console.print(f"speed: Turbo in {speed['weightshop_s'] * 1e3:.0f} ms per image, {speed['x_stock']:.2f}x stock "
                  f"diffusers ({speed['stock_s'] * 1e3:.0f} ms) on the same weights")
    curate = summary["stages"]["curate"]
    caught = curate["planted_faults_caught"]
    console.print(f"curate: {curate['counts']}; planted faults caught {sum(caught.values())}/{len(caught)} "
                  f"({', '.join(k for k, v in caught.items() if v)}); cache second run "
                  f"{curate['cache_speedup']:.0f}x faster, encoded {curate['cache_second_run_encoded']}")
    t = summary["stages"]["train"]
    console.print(f"train: {summary['concept']} LoRA, {t['steps']} steps in {t['seconds']:.0f} s, loss {t['loss_first']:.3f} -> "
                  f"{t['loss_last_ema']:.3f}; {t['modules_injected_on_turbo']}/{t['modules']} modules injected on Turbo")
    x = summary["stages"]["transfer"]
    ratio = "n/a" if x["transfer_ratio"] is None else f"{x['transfer_ratio']:.2f}"
    f = x["lora_figures"]
    what = f"{summary['concept']} hit rate (probe)" if "probe" in x["scorers"] else "similarity to the training set"
    console.print(f"transfer: {what} without -> with the LoRA at strength 1: Raw {f['raw_hit_rate_before']:.0%} -> "
                  f"{f['raw_hit_rate']:.0%}, Turbo {f['turbo_hit_rate_before']:.0%} -> {f['turbo_hit_rate']:.0%}; "
                  f"transfer ratio {ratio} at the recommended Turbo strength {x['recommended_strength']:g}")
    if f["turbo_over_raw"] is not None:
        console.print(f"  Turbo keeps {f['turbo_over_raw']:.0%} of what the LoRA does on Raw at strength 1 "
                      "(100 % = it carries over whole)")
    if "raw_adherence_drop_points" in f:
        console.print(f"  adherence cost: Raw {f['raw_adherence_drop_points']:.1f} pts, Turbo "
                      f"{f['turbo_adherence_drop_points']:.1f} pts (how much less of the rest of the prompt the "
                      "images get right with the LoRA than without)")
    e = summary["stages"]["eval"]
    console.print(f"eval: [bold]{e['headline']}[/]; gate on prompts without the {summary['concept']}: "
                  f"{'n/a' if e['gate_passed'] is None else 'pass' if e['gate_passed'] else 'FAIL'}", highlight=False)
    for line in e["reasons"] + e["flags"]:
        console.print(f"  {line}", highlight=False)
    q = summary["stages"]["quantize"]
    console.print("quantize: drift of nano-Turbo's files against the unquantized Turbo (same seeds)")
    for r in q["table"]:
        console.print(f"  {r['format']:<6} LoRA {r['lora']:<3} {r['file MB']:>7.2f} MB ({r['size vs ref']:.0%})  "
                      f"PSNR {r['PSNR dB']:.1f} dB  SSIM {r['SSIM']:.3f}  adherence delta "
                      f"{'n/a' if r['adherence delta'] is None else format(r['adherence delta'], '+.3f')}  "
                      f"gate {r['gate']}", highlight=False)
    console.print(f"  from here on: {q['chosen'] or 'the unquantized Turbo (no file passed the gate)'}",
                  highlight=False)
    v = summary["stages"]["serve"]
    console.print(f"serve: one image through POST /v1/images/generations with the LoRA in {v['latency_s']:.2f} s, "
                  f"${v['cost_per_image']:.6f} per image at ${v['dollars_per_hour']:g}/device-hour", highlight=False)
    console.print(f"report: [bold]{summary['report']}[/]")
