"""Sampling and scoring one rank's prompts, and the natural-length probe built from them.

Completions arrive grouped by prompt (``rollout.n`` consecutive rows per prompt), and a
prompt's group lives on one rank, so group statistics never cross ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grpo_cli.config.schema import RunConfig
from grpo_cli.data.datasets import PromptSet
from grpo_cli.data.vision import image_inputs
from grpo_cli.rewards.combine import combine_rewards
from grpo_cli.rewards.loader import RewardFn, score_batch
from grpo_cli.rollout.base import Completion, RolloutBackend, RolloutRequest
from grpo_cli.telemetry.histograms import length_histograms
from grpo_cli.telemetry.length_metrics import step_length_metrics
from grpo_cli.train import engine as eng


@dataclass
class Rollouts:
    """One rank's sampled and decoded completions."""

    prompt_ids: list[int]  # dataset index of each completion's prompt
    completions: list[Completion]
    texts: list[str]
    lengths: np.ndarray  # [N] int, generated tokens incl. EOS, no padding
    truncated: np.ndarray  # [N] bool, from the engine's finish reason
    vision: list[dict[str, torch.Tensor]] | None = None  # per completion (VL models)
    # the sampler's own seconds: rollout_s, and tail_s where it can tell (the hf decode loop
    # and vLLM; not transformers `generate`)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Scored:
    """The reward of each completion of a :class:`Rollouts`."""

    rewards: np.ndarray  # [N] final reward (task reward + length terms)
    correct: np.ndarray  # [N] float, NaN = unknown
    components: dict[str, np.ndarray]  # each [N]
    # Other per-row rollout columns: ``budget`` (data.length_budget), ``gfpo_kept`` (GFPO),
    # ``round``/``informative``/``trained`` (dynamic sampling), the update's per-row numbers.
    columns: dict[str, np.ndarray] = field(default_factory=dict)


def sample(rollout: RolloutBackend, prompts: PromptSet, ids: list[int], cap: int, n: int,
           cfg: RunConfig, tokenizer: Any, seed: int) -> Rollouts:
    """``n`` completions per prompt at ``cap``, decoded. ``seed`` also seeds torch's
    generator (the hf backend draws from it; vLLM takes per-request seeds)."""
    torch.manual_seed(seed)
    images = vision = None
    if prompts.processor is not None:  # decode and resize once: tensors for hf and training,
        images = [prompts.images(i, cfg.data) for i in ids]  # the PIL images for vLLM
        vision = [image_inputs(prompts.processor, im) for im in images]
    result = rollout.generate(RolloutRequest(
        [prompts.prompt_ids[i] for i in ids], n=n, max_new_tokens=cap,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=seed,
        multi_modal=vision, images=images if cfg.rollout.backend == "vllm" else None,
    ))
    comps = result.completions
    # Only EOS is stripped: tags such as <answer> may be special tokens the reward needs.
    eos = set(rollout.eos_token_ids)
    texts = tokenizer.batch_decode(
        [[t for t in c.token_ids if t not in eos] for c in comps], skip_special_tokens=False
    )
    return Rollouts(
        [ids[c.prompt_index] for c in comps], comps, texts,
        np.array([len(c.token_ids) for c in comps]), np.array([c.truncated for c in comps]),
        [vision[c.prompt_index] for c in comps] if vision is not None else None,
        dict(result.timings))


def tail_share(r: Rollouts) -> dict[str, float]:
    """``perf/rollout_tail_frac``: the share of this rank's sampling time spent after 90% of
    each sampling call's completions had ended (the long tail a generous cap pays for);
    only where the sampler can tell (the hf decode loop and vLLM, not `generate`)."""
    total, tail = r.timings.get("rollout_s"), r.timings.get("tail_s")
    if total is None or tail is None or total <= 0:
        return {}
    return {"perf/rollout_tail_frac": tail / total}


def score(r: Rollouts, prompts: PromptSet, cap: int, n: int, step: int, cfg: RunConfig,
          reward_fn: RewardFn) -> Scored:
    """The user's reward for every completion, then the configured length terms."""
    budgets = (np.array([prompts.budgets[i] for i in r.prompt_ids], dtype=np.int64)
               if prompts.budgets is not None else None)  # [N] L1's requested lengths
    extra = [{"budget": int(b)} for b in budgets] if budgets is not None \
        else [{}] * len(r.prompt_ids)
    scores = score_batch(reward_fn, [
        {**prompts.rows[i], "prompt": prompts.texts[i], "response": text,
         "response_length": int(length), "ground_truth": prompts.rows[i][cfg.data.answer_key],
         "truncated": bool(truncated), **more}
        for i, text, length, truncated, more in zip(r.prompt_ids, r.texts, r.lengths,
                                                    r.truncated, extra, strict=True)
    ])
    rewards, added = combine_rewards(scores, r.lengths, r.truncated, cap, n, step, cfg.reward,
                                     cfg.length, budgets)
    columns = {"budget": budgets} if budgets is not None else {}
    return Scored(rewards, scores.correct, {**scores.components, **added}, columns)


def gather_columns(local: dict[str, np.ndarray], d: eng.Dist) -> dict[str, np.ndarray]:
    """Per-completion columns of every rank, concatenated in rank order (groups stay whole)."""
    parts = eng.all_gather_objects(local, d.world)
    return {k: np.concatenate([p[k] for p in parts]) for k in local}


def validation_metrics(
    rollout: RolloutBackend, val: PromptSet, cap: int, cfg: RunConfig, reward_fn: RewardFn,
    tokenizer: Any, step: int, d: eng.Dist,
) -> dict[str, Any]:
    """The natural-length probe: the same held-out prompts every time, at a generous cap."""
    per_rank = len(val.prompt_ids) // d.world
    ids = list(range(d.rank * per_rank, (d.rank + 1) * per_rank))
    r = sample(rollout, val, ids, cap, cfg.val.n, cfg, tokenizer,
               seed=cfg.seed * 7_919 + d.rank)  # the same draws at every probe
    s = score(r, val, cap, cfg.val.n, step, cfg, reward_fn)
    cols = gather_columns({"length": r.lengths, "truncated": r.truncated,
                           "reward": s.rewards, "correct": s.correct}, d)
    groups = np.arange(len(cols["length"])) // cfg.val.n
    m = step_length_metrics(cols["length"], cols["truncated"], cols["reward"], groups,
                            cols["correct"], cap)
    if not np.isnan(cols["correct"]).all():
        m["accuracy"] = float(np.nanmean(cols["correct"]))
    out: dict[str, Any] = {f"val/{k}": v for k, v in m.items()}
    out.update(length_histograms(cols["length"], cols["correct"], cap, "val/"))  # (counts, edges)
    return out
