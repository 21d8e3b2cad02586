"""A whole run at Qwen2.5's 151,936-token vocabulary, on the CPU.

The toy's 261 tokens make every [rows, positions, vocabulary] tensor tiny; a real
vocabulary makes the logits the largest tensors of the step (see test_logits_memory.py).
Here a small random-init Qwen2 with the real vocabulary (no download) samples, trains,
probes and saves: sampled ids span the whole vocabulary, and the sampler's log-probs are
the trainer's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.helpers import CORRECT, TINY, finished_run, random_model

VOCAB = 151936


def test_a_run_at_a_real_vocabulary(tmp_path: Path) -> None:
    model = random_model(tmp_path / "model", vocab_size=VOCAB, hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2)
    run = finished_run(tmp_path / "runs", *TINY, f"model.path={model}", "trainer.steps=2",
                       "max_len=24", "trainer.updates_per_batch=2", "trainer.micro_batch_size=2",
                       "algorithm.kl_coef=0.1", "logger.store_tokens=true",
                       "trainer.val_every=1", "trainer.save_final=true",
                       "logger.wandb.mode=disabled")
    rows = pd.concat([pd.read_parquet(p) for p in sorted((run / "rollouts").glob("*.parquet"))])
    tokens = [t for c in rows["completion_tokens"] for t in c]
    assert max(tokens) > 100_000 and min(tokens) >= 0 and max(tokens) < VOCAB
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    assert all(m["rollout/logprob_diff"] < CORRECT for m in metrics), metrics
    assert all("val/length/mean" in m for m in metrics)
