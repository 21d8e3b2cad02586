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

from tests.helpers import TINY, ZERO3_SHARDED, only_run

TOY_TENSORS = 50  # parameter tensors of the toy Qwen2 (its embedding is tied to the LM head)


def test_ranks_whose_rows_end_at_different_steps_finish(grpo, runs_dir: Path) -> None:
    """With DeepSpeed's hooks on, each decode step re-gathers the shards, and the rank whose
    rows ended first waits in the next collective for the other forever (seen: a hang in
    the first update). Gathered once with the hooks off, both ranks finish, the probe too."""
    res = grpo("run", *TINY, *ZERO3_SHARDED, "trainer.gpus=2", "trainer.steps=3", "max_len=96",
               "trainer.val_every=2", "logger.wandb.mode=disabled", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run = only_run(runs_dir)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed"
    assert meta["zero3_sharded_tensors"] == TOY_TENSORS  # every tensor is sharded
    rows = pd.concat([pd.read_parquet(p) for p in sorted((run / "rollouts").glob("*.parquet"))])
    per_rank = len(rows) // 3 // 2  # rows of one rank in one step (ranks hold blocks)
    longest = rows.groupby([rows["step"], np.arange(len(rows)) % (2 * per_rank) // per_rank])[
        "response_length"].max().unstack()  # [step, rank]
    assert (longest[0] != longest[1]).any(), longest  # the ranks decoded different steps
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert "val/length/mean" in metrics[2]
