"""Sampling efficiency of the `hf` backend: how many generated positions are padding.

`generate` runs a micro-batch until its longest completion ends; every row that ended
earlier still occupies a position per step. Waste = 1 - generated tokens / (rows x longest
row), per generate call, over the run. Remedies measured: the micro-batch size
(`rollout.micro_batch_size`: smaller calls waste less but parallelise less), and
`rollout.drop_finished=true`, where a row leaves the batch at its EOS (rollout/decode.py): a
row is computed for exactly its own length, so no decode position is padding. Default toy
task, cap 32 (about half the completions truncated) and cap 128 (few truncated).

    .venv/bin/python benchmarks/padding_waste.py --steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import run_child  # noqa: E402

CHILD = Path(__file__)


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
    return {"waste": 1 - generated / padded, "rollout_s": statistics.median(rollout_s),
            "tokens": int(np.sum(raw["tokens"][1:]))}


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
                         f"rollout.drop_finished={str(drop).lower()}"]
            r = run_child(CHILD, ["--child", str(micro), *overrides])
            per_step = r["tokens"] / (a.steps - 1)
            name = "rows leave at EOS" if drop else "generate"
            print(f"| {cap} | {name} | {micro} | {128 // micro} | {r['waste']:.1%} | "
                  f"{r['rollout_s']:.2f} | {per_step / r['rollout_s']:.0f} |")


if __name__ == "__main__":
    main()
