"""Telemetry overhead: step time with full telemetry against minimal logging.

Full: the default run (length histograms, correlations, per-completion Parquet, metrics JSONL,
decoded samples every 10 steps, W&B offline). Minimal: W&B disabled and no decoded samples
(the run store, the record of the run, always stays). Both sides alternate in fresh processes;
the table gives median step wall times and, from the full runs, the loop's own
`perf/telemetry_s` share of the step (gather, metrics and the writes, measured inside).

    .venv/bin/python benchmarks/telemetry_overhead.py --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import grpo_steps, step_seconds  # noqa: E402

BASE = ["logger.progress=false", "trainer.val_every=0"]
SIDES = {"full telemetry (W&B offline, samples)": ["logger.wandb.mode=offline"],
         "minimal (no W&B, no samples)": ["logger.wandb.mode=disabled",
                                          "logger.sample_every=0"]}


def metrics_call_ms(n: int = 512, cap: int = 2048, repeats: int = 50) -> float:
    """Best-of wall time of one `step_length_metrics` call on a realistic batch, in ms."""
    import time

    import numpy as np

    from grpo_cli.telemetry.length_metrics import step_length_metrics

    rng = np.random.default_rng(3)
    args = (rng.integers(1, cap + 1, n), rng.random(n) < 0.1, rng.random(n),
            np.repeat(np.arange(n // 8), 8), rng.integers(0, 2, n).astype(float), cap)
    step_length_metrics(*args)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step_length_metrics(*args)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    step_s: dict[str, list[float]] = {k: [] for k in SIDES}
    share: list[float] = []
    for r in range(a.repeats):
        for name, extra in SIDES.items():
            raw = grpo_steps([*BASE, *extra, f"trainer.steps={a.steps}", f"seed={r}"])
            step_s[name].append(statistics.median(step_seconds(raw["ends"])))
            if "offline" in extra[0]:
                share += [m["perf/telemetry_s"] / m["perf/step_s"] for m in raw["metrics"][1:]]
    full, minimal = (statistics.median(v) for v in step_s.values())
    print(f"\n### Telemetry overhead ({a.repeats} runs each, {a.steps - 1} timed steps)\n")
    print("| logging | median s/step | runs' medians, min-max |")
    print("| --- | ---: | ---: |")
    for name, values in step_s.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    print(f"\nFull vs minimal: {full / minimal - 1:+.1%} step time, within the run-to-run spread "
          "above when the ranges overlap. Telemetry measured inside the full runs (gather, "
          f"metrics, store and W&B writes): {statistics.median(share):.2%} of a step (median "
          f"over steps, max {max(share):.2%}).")
    print(f"\nOne `step_length_metrics` call on 512 completions (groups of 8, cap 2048): "
          f"{metrics_call_ms():.2f} ms (best of 50).")


if __name__ == "__main__":
    main()
