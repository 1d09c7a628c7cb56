"""The regression gate: a candidate run against a baseline run on the same suite and seeds, metric by metric.

Images pair by (prompt id, seed position). For each per-image metric both runs have, the paired differences
(candidate - baseline) get a bootstrap interval; a metric **regressed** when its mean moved the wrong way by more
than its tolerance *and* its interval lies wholly on the wrong side of zero (material and not chance). Tolerances
come from a noise floor (the same model on a second seed set: how far a metric moves by chance, measured and
stored by `noise_floor`) or from a YAML/JSON file of `metric: tolerance`. Two runs are compared only when their
suites and judges are the same (same backend, weights sha256 and version).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from weightshop.errors import WeightshopError
from weightshop.eval.harness import EvalRun
from weightshop.io import atomic_write_json

# Which way is better, by the metric's own name (the part after "<judge>."). Metrics not named here are reported
# but not gated: a gate must know what "worse" means before it fails a build on it.
HIGHER_IS_BETTER = {"concept", "adherence", "all_correct", "clip_t", "clip_i", "dino", "dinov2", "pickscore"}
LOWER_IS_BETTER = {"distance"}


def direction(metric: str) -> int:
    name = metric.rsplit(".", 1)[-1]
    return 1 if name in HIGHER_IS_BETTER else -1 if name in LOWER_IS_BETTER else 0


@dataclass
class GateRow:
    metric: str
    baseline: float
    candidate: float
    diff: float  # candidate - baseline, paired mean
    lo: float
    hi: float
    tolerance: float
    n: int
    status: str  # "regressed", "improved", "within tolerance", "not gated"


@dataclass
class GateResult:
    passed: bool
    rows: list[GateRow]
    moved: list[dict] = field(default_factory=list)  # the images that moved most the wrong way, per regressed metric
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def as_dict(self) -> dict:
        return {"passed": self.passed, "rows": [asdict(r) for r in self.rows], "moved": self.moved, "notes": self.notes}


def check_comparable(a: EvalRun, b: EvalRun) -> list[str]:
    """Refuse runs on different suites; name the judges whose numbers cannot be compared (they are left out)."""
    from weightshop.judge import comparable

    if a.suite["sha256"] != b.suite["sha256"]:
        raise WeightshopError(f"the runs used different suites ({a.suite['name']} {a.suite['sha256'][:12]} vs "
                              f"{b.suite['name']} {b.suite['sha256'][:12]}): a gate compares the same prompts")
    return [name for name in set(a.judges) & set(b.judges) if not comparable(a.judges[name], b.judges[name])]


def paired(candidate: EvalRun, baseline: EvalRun, metric: str, tag: str | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    c, b = candidate.values(metric, tag), baseline.values(metric, tag)
    keys = sorted(set(c) & set(b))
    return np.array([b[k] for k in keys]), np.array([c[k] for k in keys]), keys


def gate(candidate: EvalRun, baseline: EvalRun, tolerances: dict[str, float] | None = None, *,
         metrics: list[str] | None = None, tag: str | None = None, level: float = 0.95, seed: int = 0,
         moved: int = 8) -> GateResult:
    """Compare `candidate` with `baseline` (see the module docstring). `metrics` limits the gated metrics, `tag`
    the prompts (e.g. "no-trigger": a LoRA must not change what it was not trained for)."""
    from weightshop.judge.stats import paired_bootstrap

    tolerances = tolerances or {}
    different = check_comparable(candidate, baseline)
    notes = [f"judge {name}: different backend, weights or version in the two runs: not compared" for name in different]
    names = [m for m in (metrics or sorted(set(candidate.metric_names()) & set(baseline.metric_names())))
             if m.split(".")[0] not in different]
    rows, worst = [], []
    for metric in names:
        base, cand, keys = paired(candidate, baseline, metric, tag)
        if len(keys) < 2:
            notes.append(f"{metric}: fewer than 2 paired images{f' tagged {tag}' if tag else ''}: not compared")
            continue
        pb = paired_bootstrap(base, cand, level=level, rng=np.random.default_rng(seed))
        sign, tol = direction(metric), float(tolerances.get(metric, 0.0))
        good_mean, good_hi = sign * pb["mean_diff"], max(sign * pb["lo"], sign * pb["hi"])
        good_lo = min(sign * pb["lo"], sign * pb["hi"])
        if sign == 0:
            status = "not gated"
        elif good_mean < -tol and good_hi < 0:
            status = "regressed"
        elif good_mean > tol and good_lo > 0:
            status = "improved"
        else:
            status = "within tolerance"
        rows.append(GateRow(metric, float(base.mean()), float(cand.mean()), pb["mean_diff"], pb["lo"], pb["hi"], tol,
                            len(keys), status))
        if status == "regressed":
            order = np.argsort(sign * (cand - base))[:moved]
            files_b = {(im["id"], im["position"]): im["file"] for im in baseline.images}
            files_c = {(im["id"], im["position"]): im["file"] for im in candidate.images}
            worst += [{"metric": metric, "id": keys[i][0], "position": keys[i][1], "baseline": float(base[i]),
                       "candidate": float(cand[i]), "baseline_file": files_b[keys[i]],
                       "candidate_file": files_c[keys[i]]} for i in order]
    if not rows:
        raise WeightshopError("nothing to gate: the two runs share no per-image metric on paired images")
    return GateResult(not any(r.status == "regressed" for r in rows), rows, worst, notes)


def noise_floor(run_a: EvalRun, run_b: EvalRun, level: float = 0.95, seed: int = 0) -> dict:
    """How far each metric moves by chance: the same model on two seed sets (pair by prompt and seed position),
    the larger bound of the paired mean difference's interval. Stored and read back as the gate's tolerances."""
    from weightshop.judge.stats import paired_bootstrap

    if run_a.model["transformer_sha256"] != run_b.model["transformer_sha256"] or run_a.loras != run_b.loras:
        raise WeightshopError("a noise floor compares the same model (and LoRAs) with itself on two seed sets")
    if run_a.suite["seed_offset"] == run_b.suite["seed_offset"]:
        raise WeightshopError("a noise floor needs two seed sets: run the second with another seed offset")
    check_comparable(run_a, run_b)
    tolerances = {}
    for metric in sorted(set(run_a.metric_names()) & set(run_b.metric_names())):
        a, b, keys = paired(run_b, run_a, metric)
        if len(keys) >= 2:
            pb = paired_bootstrap(a, b, level=level, rng=np.random.default_rng(seed))
            tolerances[metric] = float(max(abs(pb["lo"]), abs(pb["hi"])))
    return {"tolerances": tolerances, "model": run_a.model, "suite": run_a.suite["name"],
            "seed_offsets": [run_a.suite["seed_offset"], run_b.suite["seed_offset"]], "level": level}


def save_noise_floor(floor: dict, path: str | Path) -> Path:
    return atomic_write_json(path, floor)


def load_tolerances(path: str | Path) -> dict[str, float]:
    """Tolerances from a noise floor written by `noise_floor` (JSON) or a `metric: tolerance` YAML/JSON file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML
    except FileNotFoundError:
        raise WeightshopError(f"tolerances file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise WeightshopError(f"{path} is not valid YAML or JSON: {e}") from None
    table = data.get("tolerances", data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in table.values()):
        raise WeightshopError(f"{path}: expected a noise floor (from `weightshop eval noise-floor`) or a mapping of "
                              "metric: tolerance (a number >= 0), e.g. 'probe.adherence: 0.03'")
    return {str(k): float(v) for k, v in table.items()}
