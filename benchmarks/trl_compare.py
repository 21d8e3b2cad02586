"""Training throughput: grpo-cli against TRL's GRPOTrainer on the same work, on this CPU.

Same tiny HF model directory (the embedded toy), the same chat-templated prompts (the toy
task), group size 8, 16 prompts (128 completions) per optimiser step, 32-token cap,
temperature 1 / top-p 1 / top-k off, the same reward function (grpo_cli.rewards.math), no KL,
token-level clipping 0.2 / 0.28, AdamW lr 7e-4 betas (0.9, 0.99), constant schedule, fp32,
micro-batches of 32 (4 accumulation steps), one optimiser step per rollout batch. W&B off on
both sides; grpo-cli still writes its run store (that is part of what it does).

Each run is a fresh process; the two sides alternate, `--repeats` times each. A step's time is
the wall time between the ends of consecutive optimiser steps (generation, reward, forward,
backward, optimiser, logging), so the first step (warm-up) is left out. Prints a Markdown table
with medians and the ratio. TRL is only needed here: `pip install -e '.[bench]'`.

    .venv/bin/python benchmarks/trl_compare.py --steps 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import grpo_steps, run_child, summary  # noqa: E402

PROMPTS, N, CAP, MICRO, ACCUM, LR = 16, 8, 32, 32, 4, 7e-4
OURS = [f"trainer.prompts_per_step={PROMPTS}", f"rollout.n={N}", f"max_len={CAP}",
        f"trainer.micro_batch_size={MICRO}", f"trainer.lr={LR}", "trainer.val_every=0",
        "logger.wandb.mode=disabled", "logger.progress=false", "logger.sample_every=0"]


def child_trl(steps: int, seed: int) -> dict:
    """TRL's GRPOTrainer with the same settings; step ends timed by a callback."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpo_cli.config.schema import DataConfig, RewardConfig
    from grpo_cli.data.datasets import build_prompts, load_rows
    from grpo_cli.models.load import load_tokenizer, resolve_model_path
    from grpo_cli.rewards.loader import load_reward_fn, score_batch

    model_dir = resolve_model_path("toy")
    tokenizer = load_tokenizer(model_dir, False)
    data = DataConfig()
    prompts = build_prompts(load_rows(data.train_files, data, seed=seed), data, tokenizer)
    dataset = Dataset.from_dict({
        "prompt": prompts.texts,  # already chat-templated: TRL tokenizes it as is
        "ground_truth": [str(r[data.answer_key]) for r in prompts.rows],
    })
    reward_fn = load_reward_fn(RewardConfig().function, {})
    tokens: list[int] = []

    def reward(prompts, completions, completion_ids, ground_truth, **_):  # noqa: ANN001, ANN202
        tokens.append(sum(len(ids) for ids in completion_ids))
        return score_batch(reward_fn, [
            {"prompt": p, "response": c, "ground_truth": g, "response_length": len(ids)}
            for p, c, g, ids in zip(prompts, completions, ground_truth, completion_ids,
                                    strict=True)]).overall.tolist()

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, use_cpu=True, max_steps=steps, seed=seed,
            per_device_train_batch_size=MICRO, gradient_accumulation_steps=ACCUM,
            num_generations=N, max_completion_length=CAP, temperature=1.0, top_p=1.0,
            top_k=0, learning_rate=LR, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
            max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
            loss_type="grpo", epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
            report_to=[], logging_steps=1, save_strategy="no", bf16=False, fp16=False,
            disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir),
            reward_funcs=[reward], args=args, train_dataset=dataset,
            processing_class=tokenizer, callbacks=[StepEnds()],
        )
        trainer.train()
    return {"ends": ends, "tokens": tokens}


def measure(side: str, steps: int, seed: int) -> dict:
    if side == "ours":
        raw = grpo_steps(OURS + [f"trainer.steps={steps}", f"seed={seed}"])
    else:
        raw = run_child(Path(__file__), ["--child", "trl", "--steps", str(steps),
                                         "--seed", str(seed)])
    return summary(raw, PROMPTS * N)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["trl"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.child == "trl":
        print(json.dumps(child_trl(a.steps, a.seed)))
        return
    results: dict[str, list[dict]] = {"grpo-cli": [], "TRL GRPOTrainer": []}
    for r in range(a.repeats):  # alternate, so drift on the machine hits both sides
        for name, side in (("grpo-cli", "ours"), ("TRL GRPOTrainer", "trl")):
            results[name].append(measure(side, a.steps, seed=r))
            m = results[name][-1]
            print(f"# run {r} {name}: {m['step_s']:.2f} s/step, {m['tokens_per_s']:.0f} tok/s",
                  file=sys.stderr)
    import trl

    print(f"\n### Training throughput vs TRL {trl.__version__} ({a.repeats} runs each, "
          f"{a.steps - 1} timed steps per run, {os.cpu_count()} CPU cores)\n")
    print("| trainer | median s/step | completions/s | tokens/s | mean length |")
    print("| --- | ---: | ---: | ---: | ---: |")
    med = {}
    for name, runs in results.items():
        med[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m = med[name]
        print(f"| {name} | {m['step_s']:.2f} | {m['completions_per_s']:.1f} | "
              f"{m['tokens_per_s']:.0f} | {m['mean_length']:.1f} |")
    ratio = med["grpo-cli"]["completions_per_s"] / med["TRL GRPOTrainer"]["completions_per_s"]
    print(f"\ngrpo-cli / TRL completions per second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
