"""Where a step's time goes, for the default run (`grpo run`, the embedded toy).

Two views of the same kind of run:

1. The loop's own timers, unprofiled (`perf/rollout_s`, `perf/train_s`, `perf/telemetry_s`
   and the step's wall time), so the shares are not distorted by a profiler.
2. A sampling profile (pyinstrument, 1 ms) of a second run, its time attributed to the
   components below by the function each sample is in (the outermost match wins, so nothing
   is counted twice); "rest of the loop" is what no component claims.

    .venv/bin/python benchmarks/step_profile.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import grpo_steps, run_child, step_seconds  # noqa: E402

# component -> (function name, file suffix) pairs that start it
COMPONENTS: dict[str, list[tuple[str, str]]] = {
    "start-up: model load + DeepSpeed engine": [("load_causal_lm", "models/load.py"),
                                                ("make_policy_engine", "train/engine.py"),
                                                ("make_reference_engine", "train/engine.py"),
                                                ("make_rollout", "train/build.py")],
    "rollout: sampling (generate)": [("generate", "rollout/hf.py")],
    "rollout: decode + reward": [("score_batch", "rewards/loader.py"),
                                 ("combine_rewards", "rewards/combine.py"),
                                 ("batch_decode", "tokenization_utils_base.py")],
    "validation probe (every 10 steps)": [("validation_metrics", "train/sample.py")],
    "reference / old log-probs": [("logprobs_no_grad", "train/batch.py")],
    "training forward": [("forward_logprobs", "train/batch.py")],
    "backward": [("backward", "deepspeed/runtime/engine.py")],
    "optimiser step": [("optimizer_step", "train/engine.py")],
    "telemetry (gather + metrics)": [("gather_columns", "train/sample.py"),
                                     ("step_length_metrics", "telemetry/length_metrics.py"),
                                     ("length_histogram", "telemetry/length_metrics.py")],
    "store + sinks (Parquet, JSONL, W&B)": [("log", "telemetry/run.py")],
}


def child_profile(steps: int) -> dict:
    from pyinstrument import Profiler

    from benchmarks.common import timed_train

    profiler = Profiler(interval=0.001)
    profiler.start()
    timed_train([f"trainer.steps={steps}", "logger.progress=false"])
    profiler.stop()
    root = profiler.last_session.root_frame()
    totals = dict.fromkeys(COMPONENTS, 0.0)
    loop_total = 0.0

    def component(frame) -> str | None:  # noqa: ANN001
        for name, starts in COMPONENTS.items():
            if any(frame.function == fn and (frame.file_path or "").endswith(suffix)
                   for fn, suffix in starts):
                return name
        return None

    def walk(frame, in_loop: bool) -> None:  # noqa: ANN001
        nonlocal loop_total
        if not in_loop and frame.function == "_train" and \
                (frame.file_path or "").endswith("train/loop.py"):
            loop_total += frame.time
            in_loop = True
        if in_loop:
            name = component(frame)
            if name is not None:
                totals[name] += frame.time
                return
        for child in frame.children:
            walk(child, in_loop)

    walk(root, False)
    return {"totals": totals, "loop_s": loop_total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child_profile(a.steps)))
        return

    raw = grpo_steps([f"trainer.steps={a.steps}", "logger.progress=false"])
    rows = raw["metrics"][1:]  # step 0 is warm-up
    wall = statistics.mean(step_seconds(raw["ends"]))
    phases = {k: statistics.mean(m[f"perf/{k}"] for m in rows)
              for k in ("rollout_s", "train_s", "telemetry_s")}
    print(f"\n### Where a step goes: default run, {a.steps} steps (steps 1-{a.steps - 1})\n")
    print("Loop timers, no profiler (validation probe steps included):\n")
    print("| phase | s/step | share |")
    print("| --- | ---: | ---: |")
    for name, key in (("rollout (sample, decode, reward, batch)", "rollout_s"),
                      ("train (forward, backward, optimiser)", "train_s"),
                      ("telemetry (gather, metrics, store + W&B write)", "telemetry_s")):
        print(f"| {name} | {phases[key]:.3f} | {phases[key] / wall:.1%} |")
    print(f"| step wall time | {wall:.3f} | 100% |")

    prof = run_child(Path(__file__), ["--child", "--steps", str(a.steps)])
    loop = prof["loop_s"]
    print(f"\nSampling profile (pyinstrument), whole loop of {a.steps} steps = {loop:.1f} s "
          "(step 0 included):\n")
    print("| component | s | share |")
    print("| --- | ---: | ---: |")
    for name, s in sorted(prof["totals"].items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {s:.2f} | {s / loop:.1%} |")
    rest = loop - sum(prof["totals"].values())
    print(f"| rest of the loop (batching, advantages, Python) | {rest:.2f} | {rest / loop:.1%} |")


if __name__ == "__main__":
    main()
