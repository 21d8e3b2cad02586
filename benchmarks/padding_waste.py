"""Sampling efficiency of the `hf` backend: how many generated positions are padding.

`generate` runs a micro-batch until its longest completion ends; every row that ended
earlier still occupies a position per step. Waste = 1 - generated tokens / (rows x longest
row), per generate call, over the run. Remedies measured: the micro-batch size
(`rollout.micro_batch_size`: smaller calls waste less but parallelise less), and
`rollout.drop_finished=true`, where a row leaves the batch at its EOS (rollout/decode.py): a
row is computed for exactly its own length, so no decode position is padding. Default toy
task, cap 32 (about half the completions truncated) and cap 128 (few truncated).

Training pays for padding too: the forward and backward passes run every micro-batch of
`trainer.micro_batch_size` rows (32 here) at the batch's widest prompt + longest completion.
With `trainer.group_by_length=true` rows are sorted by length into micro-batches, each cut
to its own widths. Waste = 1 - real prompt + completion tokens / positions computed; packing
several rows into one (position ids reset per row) would bring it to ~0, so the grouped
waste is all that packing could still save. Measured with `rollout.drop_finished=true`.

    .venv/bin/python benchmarks/padding_waste.py --steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import run_child  # noqa: E402

CHILD = Path(__file__)
TRAIN_MICRO = 32  # trainer.micro_batch_size of the training-padding table


def child(overrides: list[str], micro: int) -> dict:
    """Train; read back each step's completions in generate order (one rank: store order).
    With rows leaving at EOS the positions computed are the tokens generated: waste 0."""
    from benchmarks.common import timed_train
    from grpo_cli.telemetry.store import read_rollouts, runs_root

    raw = timed_train(overrides)
    (run,) = [p for p in runs_root().iterdir() if (p / "rollouts").is_dir()]
    rows = read_rollouts(run)
    generated = padded = 0
    drop = "rollout.drop_finished=true" in overrides
    for _, step in rows.groupby("step", sort=True):
        lengths = step["response_length"].to_numpy()
        for i in range(0, len(lengths), micro):
            call = lengths[i:i + micro]
            generated += int(call.sum())
            padded += int(call.sum()) if drop else int(call.max()) * len(call)
    rollout_s = [m["perf/rollout_s"] for m in raw["metrics"][1:]]
    train_s = [m["perf/train_s"] for m in raw["metrics"][1:]]
    grouped = "trainer.group_by_length=true" in overrides
    return {"waste": 1 - generated / padded, "rollout_s": statistics.median(rollout_s),
            "train_s": statistics.median(train_s), "tokens": int(np.sum(raw["tokens"][1:])),
            "train_waste": training_waste(rows, TRAIN_MICRO, grouped)}


def training_waste(rows: Any, micro: int, grouped: bool) -> float:
    """1 - real tokens / positions the training passes compute, over every step's batch,
    micro-batched and cut by the training code itself (train/batch.py, as update.py calls it)."""
    import torch

    from grpo_cli.rollout.base import Completion
    from grpo_cli.train.batch import make_batch, micro_batches, take

    real = computed = 0
    for _, step in rows.groupby("step", sort=True):
        comps = [Completion(0, 0, list(c), [0.0] * len(c), "length" if cut else "stop")
                 for c, cut in zip(step["completion_tokens"], step["truncated"], strict=True)]
        b = make_batch([list(p) for p in step["prompt_tokens"]], comps,
                       torch.zeros(len(comps)), 0, mask_truncated=False)
        real += int(b.attention_mask.sum())
        for idx in micro_batches(b, slice(0, len(comps)), micro, grouped):
            computed += take(b, idx, trim=grouped).input_ids.numel()
    return 1 - real / computed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        micro = int(a.child[0])
        print(json.dumps(child(a.child[1:], micro)))
        return
    print(f"\n### Padding waste of the hf backend (16 prompts x 8 samples per step, "
          f"{a.steps - 1} timed steps)\n")
    print("| cap | sampler | rollout.micro_batch_size | calls/step | padding waste | "
          "rollout s/step | generated tokens/s in rollout |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    variants = [(micro, False) for micro in (128, 64, 32, 16)] + [(128, True), (64, True)]
    for cap in (32, 128):
        for micro, drop in variants:
            overrides = ["logger.progress=false", "trainer.val_every=0",
                         "logger.wandb.mode=disabled", f"max_len={cap}",
                         f"trainer.steps={a.steps}", f"rollout.micro_batch_size={micro}",
                         f"rollout.drop_finished={str(drop).lower()}", "logger.store_tokens=true"]
            r = run_child(CHILD, ["--child", str(micro), *overrides])
            per_step = r["tokens"] / (a.steps - 1)
            name = "rows leave at EOS" if drop else "generate"
            print(f"| {cap} | {name} | {micro} | {128 // micro} | {r['waste']:.1%} | "
                  f"{r['rollout_s']:.2f} | {per_step / r['rollout_s']:.0f} |")
    print(f"\n### Padding in the training passes (micro-batches of {TRAIN_MICRO}, rows leave "
          f"the sampler at EOS, {a.steps - 1} timed steps)\n")
    print("| cap | micro-batches | padded positions | train s/step |")
    print("| ---: | --- | ---: | ---: |")
    for cap in (32, 128):
        for grouped in (False, True):
            overrides = ["logger.progress=false", "trainer.val_every=0",
                         "logger.wandb.mode=disabled", f"max_len={cap}",
                         f"trainer.steps={a.steps}", "rollout.micro_batch_size=128",
                         "rollout.drop_finished=true", "logger.store_tokens=true",
                         f"trainer.micro_batch_size={TRAIN_MICRO}",
                         f"trainer.group_by_length={str(grouped).lower()}"]
            r = run_child(CHILD, ["--child", "128", *overrides])
            name = "sorted by length, cut" if grouped else "consecutive, batch width"
            print(f"| {cap} | {name} | {r['train_waste']:.1%} | {r['train_s']:.2f} |")


if __name__ == "__main__":
    main()
