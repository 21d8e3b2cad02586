"""The length-controls tables of docs/length-controls.md from finished sweeps
(`sweeps/toy_length_methods.yaml`, `sweeps/toy_dynamic_sampling.yaml`).

    .venv/bin/python docs/length_methods_table.py <sweep-id> [<sweep-id> ...] [--runs-dir runs]

One row per method (the arm's ``length=`` option), mean ± standard deviation over its seeds
(each seed's value in brackets), from each arm's metrics.jsonl: accuracy and clip ratio at
the cap (mean of the last 10% of steps, as `grpo report`'s "late" columns), and the natural
length and accuracy of the validation probe (fixed held-out prompts at a generous cap) at the
last step. L1 arms add their budget adherence (requested vs produced), GFPO arms the length
of the completions they trained on, dynamic-sampling arms what they trained on and drew.
An arm's row is its ``length=`` option plus its other overrides but the seed.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from grpo_cli.telemetry.store import read_metrics, runs_root

# (title, metric, where): late = mean of the last 10% of steps; first / last = the first /
# last step that logs it (the validation probe runs every trainer.val_every steps and last)
COLUMNS = [
    ("accuracy (train, cap)", "reward/accuracy_mean", "late"),
    ("val accuracy", "val/accuracy", "last"),
    ("natural length, step 0", "val/length/mean", "first"),
    ("natural length (val/length/mean)", "val/length/mean", "last"),
    ("length (train)", "length/mean", "late"),
    ("clip ratio", "length/clip_ratio", "late"),
]
EXTRA = [("budget |len − N|", "budget/abs_error_mean", "late"),
         ("ρ(N, len)", "budget/length_spearman", "late"),
         ("kept length", "gfpo/kept_length_mean", "late"),
         ("trained length", "dynamic/trained_length_mean", "late"),
         ("trained clip ratio", "dynamic/trained_clip_ratio", "late"),
         ("rounds", "dynamic/rounds", "late"),
         ("dropped groups", "dynamic/dropped_frac", "late"),
         ("dropped groups all cut", "dynamic/dropped_truncated_frac", "late")]


def value(metrics: list[dict], key: str, where: str) -> float:
    rows = [m[key] for m in metrics if key in m]
    if not rows:
        return float("nan")
    if where in ("first", "last"):
        return float(rows[0] if where == "first" else rows[-1])
    window = max(1, len(metrics) // 10)
    return float(np.mean([m[key] for m in metrics[-window:] if key in m]))


def cell(values: list[float], digits: int) -> str:
    v = np.array(values)
    if np.isnan(v).all():
        return "–"
    each = ", ".join(f"{x:.{digits}f}" for x in v)
    return f"{np.nanmean(v):.{digits}f} ± {np.nanstd(v, ddof=1):.{digits}f} ({each})"


def completed_runs(sweep_ids: list[str], root) -> dict[str, list[list[dict]]]:
    """Each method's completed arms (their metrics), over one or several sweeps. A later
    sweep's arms with overrides the first sweep did not have (an ablation, e.g.
    ``algorithm.adv_estimator=grpo``) get their own row, named with those overrides."""
    by_method: dict[str, list[list[dict]]] = defaultdict(list)
    first: set[str] | None = None
    for sweep_id in sweep_ids:
        manifest = json.loads((root / "sweeps" / sweep_id / "manifest.json").read_text())
        common = set(manifest["common_overrides"])
        first = common if first is None else first
        extra = sorted(o for o in common - first if not o.startswith("length="))
        for arm in manifest["arms"]:
            run = root / arm["run_id"]
            meta = run / "meta.json"
            if not meta.is_file() or json.loads(meta.read_text())["status"] != "completed":
                continue
            method = next((o.split("=", 1)[1] for o in [*arm["overrides"], *common]
                           if o.startswith("length=")), "none")
            own = [o for o in arm["overrides"] if not o.startswith(("seed=", "length="))]
            if extra or own:
                method += f" ({' '.join(extra + own)})"
            by_method[method].append(read_metrics(run))
    return by_method


def table(sweep_ids: list[str], runs_dir: str | None = None) -> str:
    by_method = completed_runs(sweep_ids, runs_root(runs_dir))
    head = ["method", "seeds", *(c[0] for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for method, runs in by_method.items():
        cells = [method, str(len(runs))]
        for _, key, where in COLUMNS:
            digits = 1 if "length/mean" in key else 2
            cells.append(cell([value(m, key, where) for m in runs], digits))
        lines.append("| " + " | ".join(cells) + " |")
        for title, key, where in EXTRA:
            vals = [value(m, key, where) for m in runs]
            if not np.isnan(vals).all():
                notes.append(f"{method}: {title} {cell(vals, 2)}")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_ids", nargs="+")
    ap.add_argument("--runs-dir", default=None)
    args = ap.parse_args()
    print(table(args.sweep_ids, args.runs_dir))


if __name__ == "__main__":
    main()
