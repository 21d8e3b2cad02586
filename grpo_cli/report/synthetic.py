"""Synthetic run stores with a known length pattern, written through the real RunStore.

Used by the report's tests (does the diagnosis find what was planted?) and by the scaling
benchmark (millions of rows without training). Metrics come from the same
``step_length_metrics`` the trainer uses, so metrics.jsonl and rollouts agree as in a real run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grpo_cli.telemetry.length_metrics import step_length_metrics
from grpo_cli.telemetry.store import RunStore

PATTERNS = ("healthy", "collapse", "explosion", "loss_bias")


def _step_batch(pattern: str, f: float, size: int, cap: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lengths, truncated, reward, correct for one step at training progress ``f`` in [0, 1]."""
    if pattern == "collapse":
        # Truncated share 60% -> 32%, the rest 28 -> 8 tokens: mean ~40 -> ~20 at cap 48.
        trunc = rng.random(size) < 0.60 - 0.28 * f
        mean = 28 - 20 * f
        natural = rng.normal(mean, mean / 3, size)
        correct = (rng.random(size) < 0.6).astype(np.float64)
    elif pattern == "explosion":
        mean = 20 + 60 * f  # natural length 20 -> 80 against a cap of 64
        natural = rng.normal(mean, mean / 4, size)
        trunc = natural > cap
        correct = (rng.random(size) < 0.5).astype(np.float64)
    elif pattern == "loss_bias":
        correct = (rng.random(size) < 0.5).astype(np.float64)
        wrong_mean = 25 + 25 * f  # incorrect answers drift longer, correct ones stay ~20
        natural = np.where(correct > 0, rng.normal(20, 4, size), rng.normal(wrong_mean, 5, size))
        trunc = natural > cap
    elif pattern == "healthy":
        natural = rng.normal(30, 8, size)
        trunc = natural > cap
        correct = (rng.random(size) < 0.3 + 0.3 * f).astype(np.float64)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; one of {PATTERNS}")
    lengths = np.clip(np.rint(natural), 1, cap - 1).astype(np.int64)
    lengths[trunc] = cap
    if pattern != "explosion":
        correct[trunc] = 0.0  # cut off before the answer: wrong, reward 0
    reward = correct.copy()
    return lengths, trunc, reward, correct


def write_synthetic_run(
    root: Path,
    run_id: str,
    pattern: str,
    steps: int = 50,
    prompts: int = 8,
    n: int = 8,
    cap: int | None = None,
    seed: int = 0,
    loss_agg_mode: str = "seq-mean-token-mean",
    samples: Sequence[dict[str, Any]] = (),
    flush_rows: int = 4096,
) -> Path:
    """A complete run store (config, meta, metrics, rollouts, samples) following ``pattern``."""
    cap = cap or {"collapse": 48, "explosion": 64, "loss_bias": 128, "healthy": 64}[pattern]
    rng = np.random.default_rng(seed)
    store = RunStore.create(Path(root), run_id, flush_rows=flush_rows)
    store.write_config({"data": {"max_response_length": cap},
                        "algorithm": {"loss_agg_mode": loss_agg_mode}, "seed": seed,
                        "run_id": run_id, "synthetic": pattern})
    start = time.time()
    store.update_meta(status="running", start_time=start, sweep_id=None)
    size = prompts * n
    group = np.repeat(np.arange(prompts), n)
    for step in range(steps):
        f = step / max(steps - 1, 1)
        lengths, trunc, reward, correct = _step_batch(pattern, f, size, cap, rng)
        metrics = step_length_metrics(lengths, trunc, reward, group, correct, cap)
        store.append_metrics({"step": step, **metrics, "perf/step_s": 1.0})
        store.add_rollouts({
            "step": np.full(size, step), "prompt_id": step * prompts + group,
            "sample": np.tile(np.arange(n), prompts), "response_length": lengths,
            "truncated": trunc, "reward": reward, "correct": correct,
            "advantage": np.zeros(size),
        })
    store.flush_rollouts()
    if samples:
        store.append_samples(list(samples))
    store.update_meta(status="completed", end_time=start + steps)
    return store.path
