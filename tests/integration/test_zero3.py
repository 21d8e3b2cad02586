"""ZeRO-3 as real models meet it: every tensor sharded across two CPU ranks.

The toys' tensors are all below DeepSpeed's persistence threshold (1e5 elements), so at
stage 3 they would stay whole on every rank and a run would never gather a parameter;
``ZERO3_SHARDED`` lowers the threshold to 0. Sampling with the hf backend then meets what
a 135M or 7B model meets: ranks whose rows end at different decode steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import TINY, ZERO3_SHARDED, finished_run

TOY_TENSORS = 50  # parameter tensors of the toy Qwen2 (its embedding is tied to the LM head)


def test_ranks_whose_rows_end_at_different_steps_finish(runs_dir: Path) -> None:
    """With DeepSpeed's hooks on, each decode step re-gathers the shards, and the rank whose
    rows ended first waits in the next collective for the other forever (seen: a hang in
    the first update). Gathered once with the hooks off, both ranks finish, the probe too."""
    run = finished_run(runs_dir, *TINY, *ZERO3_SHARDED, "trainer.gpus=2", "trainer.steps=3",
                       "max_len=96", "trainer.val_every=2", "logger.wandb.mode=disabled",
                       timeout=300)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["zero3_sharded_tensors"] == TOY_TENSORS  # every tensor is sharded
    rows = pd.concat([pd.read_parquet(p) for p in sorted((run / "rollouts").glob("*.parquet"))])
    per_rank = len(rows) // 3 // 2  # rows of one rank in one step (ranks hold blocks)
    longest = rows.groupby([rows["step"], np.arange(len(rows)) % (2 * per_rank) // per_rank])[
        "response_length"].max().unstack()  # [step, rank]
    assert (longest[0] != longest[1]).any(), longest  # the ranks decoded different steps
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert "val/length/mean" in metrics[2]


def test_bf16_trains_on_one_rank_and_on_two_sharded_ranks(grpo, tmp_path: Path) -> None:
    """bf16 on the CPU: one rank (DeepSpeed's bf16 optimizer, stage 1, said in meta.json:
    stage 0 would sum gradients in bf16) and two ranks at ZeRO-3 with every tensor sharded,
    two updates per batch and KL (the reference sharded too). Both finish with finite
    losses that moved the policy."""
    cases = {"one": ["trainer.updates_per_batch=2", "trainer.micro_batch_size=2"],
             "two": [*ZERO3_SHARDED, "trainer.gpus=2", "trainer.updates_per_batch=2",
                     "trainer.micro_batch_size=2",
                     "algorithm.kl_coef=0.1"]}
    for name, extra in cases.items():
        run = finished_run(tmp_path / name, *TINY, *extra, "model.dtype=bfloat16",
                           "trainer.steps=2", "max_len=24", "trainer.val_every=0",
                           "logger.wandb.mode=disabled", timeout=300)
        meta = json.loads((run / "meta.json").read_text())
        assert ("runs as stage 1" in meta.get("zero_stage", "")) == (name == "one")
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for m in metrics:
            assert np.isfinite(m["loss/pg"]) and np.isfinite(m["policy/entropy"])
            assert m["train/skipped_updates"] == 0
        assert metrics[1]["policy/clip_frac"] > 0 or metrics[1]["loss/pg"] != 0
