"""Shared by the benchmarks: run `grpo run` in a fresh process and time its steps.

A step's time is the wall time between the ends of consecutive steps (the end is when the
step's records are written), so it holds everything a step does; the first step (warm-up) has
no start and is left out. `python benchmarks/common.py KEY=VALUE ...` is that child process: it
prints one JSON line with the step ends, generated tokens per step and the metrics rows.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def timed_train(overrides: list[str]) -> dict[str, Any]:
    """Train in this process; record when each step's records were written."""
    from grpo_cli.startup import load_run_config
    from grpo_cli.telemetry import run as run_module
    from grpo_cli.train.loop import train

    ends: list[float] = []
    tokens: list[int] = []
    rows: list[dict[str, float]] = []
    log = run_module.RunHandle.log

    def timed_log(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = log(self, *args, **kwargs)  # (step, metrics, hists, columns, samples)
        ends.append(time.perf_counter())
        rows.append(dict(args[1]))
        tokens.append(int(args[3]["response_length"].sum()))
        return out

    run_module.RunHandle.log = timed_log  # benchmark instrumentation, not product code
    cfg, resolved = load_run_config(overrides)
    train(cfg, resolved)
    return {"ends": ends, "tokens": tokens, "metrics": rows, "max_rss_mib": max_rss_mib()}


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: Path, args: list[str], python: str = sys.executable) -> dict[str, Any]:
    """Run ``script ARGS`` in a fresh Python (this one, or ``python``: another venv's) with a
    throw-away runs root; its last stdout line is JSON."""
    with tempfile.TemporaryDirectory() as runs:
        env = dict(os.environ, GRPO_RUNS_DIR=runs, WANDB_SILENT="true",
                   TOKENIZERS_PARALLELISM="false")
        res = subprocess.run([python, str(script), *args], env=env, cwd=REPO,
                             capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{script.name} {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def grpo_steps(overrides: list[str], python: str = sys.executable) -> dict[str, Any]:
    """`grpo run OVERRIDES` in a fresh process, timed per step."""
    return run_child(Path(__file__), overrides, python)


def step_seconds(ends: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def summary(raw: dict[str, Any], completions_per_step: int) -> dict[str, float]:
    """Median step time, completions/s and generated tokens/s over the timed steps."""
    steps = step_seconds(raw["ends"])
    total = sum(steps)
    out = {"step_s": statistics.median(steps),
           "completions_per_s": completions_per_step * len(steps) / total,
           "tokens_per_s": sum(raw["tokens"][1:]) / total,
           "mean_length": sum(raw["tokens"]) / (completions_per_step * len(raw["tokens"])),
           "max_rss_mib": raw.get("max_rss_mib", float("nan"))}
    if raw.get("metrics"):  # grpo-cli runs: sampling alone (perf/rollout_s: generate,
        rollout_s = [m["perf/rollout_s"] for m in raw["metrics"][1:]]  # decode, reward)
        out["rollout_s"] = statistics.median(rollout_s)
        out["rollout_tokens_per_s"] = sum(raw["tokens"][1:]) / sum(rollout_s)
    return out

if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(timed_train(sys.argv[1:])))
