"""vLLM rollouts on a GPU, with the embedded toy models (nothing to download). Skipped where
there is no CUDA GPU (conftest) or no vllm extra. Each run prints its throughput
(perf/tokens_per_s) so a session lent a GPU can quote it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from grpo_cli.rollout import vllm_available
from grpo_cli.telemetry.store import read_metrics, read_rollouts
from tests.conftest import REPO, TINY, cli_env

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not vllm_available(), reason="pip install 'grpo-cli[vllm]'")]


def _run(runs_dir: Path, *args: str, steps: int = 3) -> Path:
    res = subprocess.run([sys.executable, "-m", "grpo_cli", "run", *TINY, "rollout=vllm",
                          "rollout.gpu_memory_utilization=0.3", f"trainer.steps={steps}", *args],
                         cwd=REPO, env=cli_env(runs_dir), capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_toy_run_samples_with_vllm_and_pushes_weights(runs_dir: Path, zero_stage: int) -> None:
    run = _run(runs_dir, "max_len=24", f"trainer.zero_stage={zero_stage}")
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [0, 1, 2]
    # the pushed weights are the trainer's: vLLM's log-probs agree with the forward pass at
    # every step, also after optimiser steps (a missed push would drift from step 1 on)
    assert all(m["rollout/logprob_diff"] < 0.05 for m in metrics), \
        [m["rollout/logprob_diff"] for m in metrics]
    rows = read_rollouts(run)
    assert (rows["response_length"] <= 24).all()
    assert (rows.loc[rows["truncated"], "response_length"] == 24).all()  # from finish_reason
    print("perf/tokens_per_s", [round(m["perf/tokens_per_s"]) for m in metrics])


def test_vision_toy_passes_images_to_vllm(runs_dir: Path) -> None:
    run = _run(runs_dir, "config=conf/experiment/toy_vl.yaml", steps=2)
    metrics = read_metrics(run)
    assert len(metrics) == 2
    assert all(m["rollout/logprob_diff"] < 0.05 for m in metrics)
