"""`grpo run rollout=vllm` end to end with real vLLM (the CPU build here; the GPU build on a
GPU), with the embedded toy models: every step's sampler log-probs equal the trainer's forward
pass (so every weight push landed, tied head and vision tower included), truncation in the
store is vLLM's finish reason, and settings vLLM cannot honour fail in one line.

A correct push measures ~3e-7 per token in fp32; a skipped push ~1e-2 and a stale tied head
~1e-3 from step 1 on; without the encoder-cache reset the VL run fails at step 1 ("Encoder
cache miss")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_cli.telemetry.store import read_metrics, read_rollouts
from tests.helpers import CORRECT, TINY, ZERO3_SHARDED, finished_vllm_run, gaps, run_grpo

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

@pytest.mark.parametrize("zero_stage", [2, 3])
def test_text_toy_pushes_weights_every_step(runs_dir: Path, zero_stage: int) -> None:
    cap = 10  # the toy often answers in exactly 10 tokens, EOS included
    run = finished_vllm_run(runs_dir, f"max_len={cap}", f"trainer.zero_stage={zero_stage}",
                       "trainer.steps=4", "trainer.prompts_per_step=4", "trainer.val_every=2",
                       "trainer.num_threads=2")
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert max(gaps(run)) < CORRECT, gaps(run)
    # the engine times each completion's end: the rollout's tail is a share of sampling
    assert all(0.0 <= m["perf/rollout_tail_frac"] < 1.0 for m in metrics)
    rows = read_rollouts(run)
    assert (rows["response_length"] <= cap).all()
    assert (rows.loc[rows["truncated"], "response_length"] == cap).all()
    # an answer whose EOS is the cap-th token stopped: vLLM says "stop", not "length"
    at_cap = rows[rows["response_length"] == cap]
    assert (~at_cap["truncated"]).any() and at_cap["truncated"].any()
    meta = json.loads((run / "meta.json").read_text())
    assert meta["vllm_engine"].startswith("vLLM on ")
    assert meta["torch_threads"] == 2  # training keeps its threads next to the engine


def test_vision_toy_pushes_the_vision_tower_and_drops_old_image_embeddings(
        runs_dir: Path) -> None:
    """Two rows only, so every step samples the same images again: with image embeddings
    of the old weights kept (or the scheduler's record of them), step 1 on goes wrong."""
    run = finished_vllm_run(runs_dir, "config=conf/experiment/toy_vl.yaml", "trainer.steps=3",
                       "data.toy_size=2", "val.num_prompts=2", "trainer.val_every=0")
    assert len(read_metrics(run)) == 3
    assert max(gaps(run)) < CORRECT, gaps(run)


@pytest.mark.parametrize(("tp", "zero"), [(1, []), (2, []), (1, ZERO3_SHARDED)],
                         ids=["tp1", "tp2", "tp1-zero3-sharded"])
def test_two_ranks_with_one_engine_each_or_one_shared(runs_dir: Path, tp: int,
                                                     zero: list[str]) -> None:
    """Each rank's engine, or one engine two ranks share, gets every push; at ZeRO-3 with
    every tensor sharded each pushed tensor is gathered from both ranks while it is read."""
    run = finished_vllm_run(runs_dir, "trainer.gpus=2", f"rollout.tensor_parallel_size={tp}",
                       "trainer.steps=3", "trainer.val_every=0", *zero)
    assert [m["step"] for m in read_metrics(run)] == [0, 1, 2]
    assert max(gaps(run)) < CORRECT, gaps(run)
    assert len(read_rollouts(run)) == 3 * 2 * 4  # both ranks' groups in the store


def test_dynamic_sampling_rounds_with_an_engine_two_ranks_share(runs_dir: Path) -> None:
    """Each round's generate is a collective of the ranks sharing the engine, so both must
    draw the same rounds (they agree on them); in fp32 the sampler's log-probs are the
    trainer's, so every TIS weight is 1."""
    run = finished_vllm_run(runs_dir, "trainer.gpus=2", "rollout.tensor_parallel_size=2",
                            "algorithm=dapo", "algorithm.rollout_correction=tis",
                            "trainer.steps=3", "trainer.val_every=0")
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert max(m["dynamic/rounds"] for m in metrics) > 1
    assert all(abs(m["mismatch/weight_mean"] - 1) < 1e-5 for m in metrics)
    assert max(gaps(run)) < CORRECT, gaps(run)
    rows = read_rollouts(run)
    assert len(rows) == sum(m["dynamic/groups_sampled"] for m in metrics) * 4


@pytest.mark.parametrize(("args", "message"), [
    (["rollout.sleep_level=1"], "rollout.sleep_level=1: vLLM has no sleep mode on CPU"),
    (["rollout.gpu_memory_utilization=0.999"], "rollout.gpu_memory_utilization=0.999: on CPU"),
])
def test_settings_the_cpu_build_cannot_honour_fail_in_one_line(
        runs_dir: Path, args: list[str], message: str) -> None:
    from grpo_cli.rollout import vllm_platform

    if vllm_platform() != "cpu":
        pytest.skip("CPU build only")
    res = run_grpo(runs_dir, "run", *TINY, "rollout=vllm", *args, timeout=900)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
