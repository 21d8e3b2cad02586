"""vLLM's GPU build on a CUDA GPU: the same backend keeps sleep mode (weights offloaded
between rollouts) and vLLM's share of the GPU, and the pushes stay exact after each wake-up.
Run where a GPU is lent (`make test-vllm` in a venv with `pip install -e '.[vllm,dev]'`);
skipped elsewhere. Each run prints its throughput (perf/tokens_per_s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_cli.telemetry.store import read_metrics
from tests.helpers import CORRECT, ZERO3_SHARDED, finished_vllm_run, gaps

pytestmark = [pytest.mark.gpu, pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.parametrize(("zero", "level"), [(["trainer.zero_stage=2"], None),
                                            (ZERO3_SHARDED, None), (ZERO3_SHARDED, 2)],
                         ids=["zero2-level1", "zero3-sharded-level1", "zero3-sharded-level2"])
def test_sleeping_engine_gets_every_push(runs_dir: Path, zero: list[str],
                                        level: int | None) -> None:
    """Level 1 (the default) offloads the weights between rollouts, level 2 drops them (then
    every rollout, step 0 and the probe included, pushes them again); at ZeRO-3 each pushed
    tensor is gathered on the GPU while vLLM's load_weights reads it."""
    extra = [] if level is None else [f"rollout.sleep_level={level}"]
    run = finished_vllm_run(runs_dir, "max_len=24", *zero, *extra, "trainer.steps=3",
                            "trainer.val_every=1", "rollout.gpu_memory_utilization=0.3")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["vllm_engine"].startswith("vLLM on CUDA: 0.3 of each GPU")
    assert f"sleep level {level or 1}" in meta["vllm_engine"]
    assert max(gaps(run)) < CORRECT, gaps(run)
    print("perf/tokens_per_s", [round(m["perf/tokens_per_s"]) for m in read_metrics(run)])


def test_vision_toy_on_gpu_drops_old_image_embeddings(runs_dir: Path) -> None:
    run = finished_vllm_run(runs_dir, "config=conf/experiment/toy_vl.yaml", "trainer.steps=3",
                       "data.toy_size=2", "val.num_prompts=2", "trainer.val_every=0",
                       "rollout.gpu_memory_utilization=0.3")
    assert max(gaps(run)) < CORRECT, gaps(run)
