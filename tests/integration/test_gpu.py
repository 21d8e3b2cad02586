"""What only a GPU shows, with nothing but this repository: the embedded toys (text and
vision-language) and random-init models built from real configs, so a GPU machine without
network runs all of it. Skipped without CUDA (tests/conftest.py); run with `pytest -m gpu`.
Each run prints its step time, sampling throughput and peak GPU memory.

The CPU suite guards device placement with a pretend device (test_pretend_device.py) and
ZeRO-3 partitioning with two CPU ranks (test_zero3.py); what it cannot see is here: CUDA
kernels and their precision, DeepSpeed's own placement, memory at real sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grpo_cli.telemetry.store import read_metrics
from tests.helpers import (
    QWEN2_5_0_5B,
    REPO,
    TINY,
    ZERO3_SHARDED,
    finished_run,
    random_model,
    run_grpo,
)

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# Sampler vs trainer log-prob gap per token: kernels for one decode step and for the whole
# sequence round differently on a GPU; bf16 keeps 8 bits of mantissa.
GAP = {"float32": 1e-3, "bfloat16": 5e-2}

CASES = {
    "fp32-zero0": [],
    "fp32-zero2-by-length-two-updates-kl": ["trainer.zero_stage=2",
                                            "trainer.group_by_length=true",
                                            "trainer.updates_per_batch=2",
                                            "algorithm.kl_coef=0.1",
                                            "trainer.micro_batch_size=2"],
    "bf16-zero0": ["model.dtype=bfloat16"],
    "bf16-zero3-sharded-checkpointed-two-updates-kl": [
        *ZERO3_SHARDED, "model.dtype=bfloat16", "model.gradient_checkpointing=true",
        "trainer.updates_per_batch=2", "algorithm.kl_coef=0.1", "trainer.micro_batch_size=2"],
    "generate-sampler": ["rollout.drop_finished=false"],
    "vl-fp32": ["config=conf/experiment/toy_vl.yaml", "data.toy_size=8"],
    "vl-bf16-zero3-sharded": ["config=conf/experiment/toy_vl.yaml", "data.toy_size=8",
                              "model.dtype=bfloat16", *ZERO3_SHARDED],
}


def summary(name: str, metrics: list[dict]) -> str:
    """Step time, sampling tokens/s and peak GPU memory (medians after the first step)."""
    later = metrics[1:] or metrics
    tokens = [m["perf/tokens_per_s"] * m["perf/step_s"] / m["perf/rollout_s"] for m in later]
    return (f"{name}: step {np.median([m['perf/step_s'] for m in later]):.2f} s, sampling "
            f"{np.median(tokens):.0f} tokens/s, peak "
            f"{max(m['perf/gpu_peak_gib'] for m in metrics):.2f} GiB")


@pytest.mark.parametrize("name", list(CASES))
def test_the_toys_train_save_and_resume_on_the_gpu(runs_dir: Path, name: str) -> None:
    args = CASES[name]
    run = finished_run(runs_dir, *TINY, *args, "trainer.steps=3", "trainer.save_every=2",
                       "max_len=24", "trainer.val_every=2", "logger.wandb.mode=disabled",
                       timeout=900)
    assert json.loads((run / "meta.json").read_text())["device"] == "cuda:0"
    metrics = read_metrics(run)
    dtype = "bfloat16" if "model.dtype=bfloat16" in args else "float32"
    for m in metrics:
        assert np.isfinite(m["loss/pg"]) and m["train/skipped_updates"] == 0
        assert m["rollout/logprob_diff"] < GAP[dtype], m["rollout/logprob_diff"]
        assert m["perf/gpu_peak_gib"] > 0
    assert "val/length/mean" in metrics[2]
    print(summary(name, metrics))
    res = run_grpo(runs_dir, "run", f"resume={run.name}", "trainer.steps=4", timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert [m["step"] for m in read_metrics(run)] == [0, 1, 2, 3]  # continued after step 1


def test_a_0_5b_model_at_a_1024_cap(tmp_path: Path) -> None:
    """Qwen2.5-0.5B's shape (151,936-token vocabulary, random weights) in bf16, 32
    completions of up to 1,024 tokens per step, gradient checkpointing as the recipes."""
    model = random_model(tmp_path / "model", **QWEN2_5_0_5B)
    run = finished_run(tmp_path / "runs", f"model.path={model}", "model.dtype=bfloat16",
                       "model.gradient_checkpointing=true", "trainer.prompts_per_step=4",
                       "rollout.n=8", "max_len=1024", "trainer.steps=3", "trainer.val_every=0",
                       "trainer.lr=1e-6", "logger.progress=false", "logger.wandb.mode=disabled",
                       timeout=1800)
    metrics = read_metrics(run)
    assert all(np.isfinite(m["loss/pg"]) for m in metrics)
    assert max(m["perf/gpu_peak_gib"] for m in metrics) < 70  # an 80 GB GPU's share
    print(summary("qwen2.5-0.5b-shape bf16 cap 1024", metrics))


def test_one_micro_batch_costs_about_two_copies_of_its_logits_on_the_gpu() -> None:
    """16 rows x 1,025 positions x 151,936 (fp32: 9.3 GiB per copy): the logits, their
    gradient and one block of fp32 work, by the allocator's exact count."""
    out = subprocess.run([sys.executable, "benchmarks/logits_memory.py", "--child",
                          "qwen2.5-0.5b", "16", "48", "1024", "--device", "cuda"], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print("logits memory on the GPU:", r)
    assert r["peak_over_start_mib"] / r["fp32_logits_copy_mib"] < 3.0, r
