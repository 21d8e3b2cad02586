"""Sampling one step's completions three ways on this CPU: transformers `generate`, the
project's decode loop where rows leave at EOS (`rollout.drop_finished`, the default) and
transformers' continuous batching (`generate_batch`, paged attention), the remedy the
throughput issue proposed first.

The toy's first 16 `toy:add` prompts x 8 samples, temperature 1, cap 32 (`--cap`), one call
each (no micro-batches); `generate_batch` with SDPA, its log-probs on, no CUDA graphs or
compilation (CPU). Each is timed `--repeats` times after one warm-up call; medians.

    .venv/bin/python benchmarks/continuous_batching.py --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from grpo_cli.config.schema import TOY, DataConfig
    from grpo_cli.data.datasets import build_prompts, load_rows
    from grpo_cli.models.load import load_tokenizer, resolve_model_path
    from grpo_cli.rollout.base import RolloutRequest
    from grpo_cli.rollout.hf import HFRollout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    model_dir = resolve_model_path(TOY)
    tokenizer = load_tokenizer(model_dir, False)
    data = DataConfig(train_files="toy:add")
    prompts = build_prompts(load_rows(data.train_files, data, seed=0), data, tokenizer)
    ids = [prompts.prompt_ids[i] for i in range(16)]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = model.config.eos_token_id
    request = RolloutRequest(ids, n=8, max_new_tokens=a.cap, temperature=1.0, top_p=1.0)

    def hf(drop: bool) -> list[int]:
        out = HFRollout(lambda: contextlib.nullcontext(model), tokenizer.pad_token_id, [eos],
                        micro_batch_size=128, drop_finished=drop).generate(request)
        return [len(c.token_ids) for c in out.completions]

    gen_config = GenerationConfig(max_new_tokens=a.cap, do_sample=True, temperature=1.0,
                                  top_p=1.0, top_k=0, num_return_sequences=8, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id)

    def continuous() -> list[int]:
        out = model.generate_batch(ids, generation_config=gen_config, warmup=False,
                                   continuous_batching_config=ContinuousBatchingConfig(
                                       return_logprobs=True, seed=0))
        return [len(o.generated_tokens) for o in out.values()]

    ways = {"transformers generate": lambda: hf(False),
            "rows leave at EOS (rollout.drop_finished)": lambda: hf(True),
            "transformers generate_batch (continuous batching)": continuous}
    print(f"\n### Sampling 16 x 8 completions at cap {a.cap}, one call ({a.repeats} timed calls "
          "each after a warm-up)\n")
    print("| sampler | median s per step's completions | mean length |")
    print("| --- | ---: | ---: |")
    for name, fn in ways.items():
        torch.manual_seed(0)
        fn()  # warm-up
        times, lengths = [], []
        for _ in range(a.repeats):
            start = time.perf_counter()
            lengths += fn()
            times.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(times):.2f} | "
              f"{statistics.mean(lengths):.1f} |")


if __name__ == "__main__":
    main()
