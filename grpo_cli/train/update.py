"""The policy update: ``trainer.updates_per_batch`` optimiser steps over one rollout batch.

Every token's loss weight comes from counts over the whole global update batch (all ranks,
all micro-batches), so the gradient is the same however the batch is split; DeepSpeed's
average over ranks is undone for the same reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from grpo_cli.algo.kl import kl_k3
from grpo_cli.algo.losses import policy_gradient_loss, token_loss_weights
from grpo_cli.config.schema import RunConfig
from grpo_cli.train import engine as eng
from grpo_cli.train.batch import Batch, forward_logprobs, logprobs_no_grad, micro_batches, take

# Per-rank sums reduced over ranks at the end of the update (see `summarise`).
STAT_KEYS = ("loss", "entropy", "kl", "clipped", "tokens", "lp_diff", "lp_tokens")


def train_on_batch(
    policy: Any, b: Batch, cfg: RunConfig, cap: int, d: eng.Dist, ref_logp: torch.Tensor | None,
) -> dict[str, float]:
    """Update the policy on the batch; returns the step's ``loss/``, ``policy/`` and
    ``train/`` metrics, reduced over ranks."""
    t = cfg.trainer
    old_logp = None  # one update: the ratio is 1 and old log-probs are the detached current
    if t.updates_per_batch > 1:
        old_logp = logprobs_no_grad(policy, b, t.micro_batch_size, cfg.rollout.temperature,
                                    t.group_by_length, d.device)
    per_update = len(b.advantages) // t.updates_per_batch
    sums = dict.fromkeys(STAT_KEYS, 0.0)
    grad_norms: list[float] = []
    skipped = 0  # updates dropped for non-finite gradients
    for u in range(t.updates_per_batch):
        rows = slice(u * per_update, (u + 1) * per_update)
        skipped += optimiser_update(policy, b, rows, cfg, cap, d, old_logp, ref_logp, sums,
                                    compare_sampler=u == 0)
        grad_norm = policy.get_global_grad_norm()
        if grad_norm is not None and np.isfinite(float(grad_norm)):
            grad_norms.append(float(grad_norm))
    return summarise(sums, grad_norms, skipped, t.updates_per_batch, ref_logp is not None, d)


def global_counts(loss_mask: torch.Tensor, d: eng.Dist) -> tuple[float, float]:
    """Sequences that carry loss and their loss tokens, over every rank's rows of this
    update: the denominators of ``token_loss_weights``. ``loss_mask`` is [n, T]."""
    local = [float((loss_mask.sum(1) > 0).sum()), float(loss_mask.sum())]
    num_seqs, num_tokens = eng.all_reduce_sum(local, d.device, d.world)
    return num_seqs, num_tokens


def optimiser_update(
    policy: Any, b: Batch, rows: slice, cfg: RunConfig, cap: int, d: eng.Dist,
    old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, sums: dict[str, float],
    compare_sampler: bool,
) -> int:
    """One optimiser step over ``rows``, accumulated over micro-batches; returns 1 when it
    was skipped for non-finite gradients. Adds this rank's statistics to ``sums``."""
    counts = global_counts(b.loss_mask[rows], d)
    t = cfg.trainer
    skipped = 0
    for idx in micro_batches(b, rows, t.micro_batch_size, t.group_by_length):
        skipped += micro_step(policy, b, idx, cfg, cap, d, counts, old_logp, ref_logp, sums,
                              compare_sampler)
    return skipped


def micro_step(
    policy: Any, b: Batch, idx: torch.Tensor, cfg: RunConfig, cap: int, d: eng.Dist,
    counts: tuple[float, float], old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
    sums: dict[str, float], compare_sampler: bool,
) -> int:
    """Forward, loss and backward of the rows ``idx`` (DeepSpeed steps at the window's end)."""
    a = cfg.algorithm
    m = take(b, idx, trim=cfg.trainer.group_by_length).to(d.device)  # [n, P' + T'] rows
    width = m.completion_ids.shape[1]  # T'
    mask = m.loss_mask  # [n, T']
    logp, entropy = forward_logprobs(policy, m, cfg.rollout.temperature, with_entropy=True)
    assert entropy is not None
    old = logp.detach() if old_logp is None else old_logp[idx, :width]  # on the device
    if compare_sampler:  # sampler vs trainer on the same weights: ~0 for hf in fp32
        # generated tokens are where the completion part of the attention mask is 1
        generated = m.attention_mask[:, m.prompt_width:].float()
        sums["lp_diff"] += float(((logp.detach() - m.sampling_logprobs).abs() * generated).sum())
        sums["lp_tokens"] += float(generated.sum())
    token_loss, clipped = policy_gradient_loss(
        logp, old, m.advantages, a.clip_ratio_low, a.clip_ratio_high
    )  # [n, T] each
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp[idx, :width])
        token_loss = token_loss + a.kl_coef * kl
        sums["kl"] += float((kl.detach() * mask).sum())
    num_seqs, num_tokens = counts
    weights = token_loss_weights(mask, a.loss_agg_mode, num_seqs=num_seqs,
                                 num_tokens=num_tokens, norm_constant=a.loss_norm_constant or cap)
    loss = (weights * token_loss).sum()
    # DeepSpeed averages gradients over ranks; weights are already global, so undo it.
    policy.backward(loss * d.world, scale_wrt_gas=False)
    skipped = eng.optimizer_step(policy)
    sums["loss"] += float(loss.detach())
    sums["entropy"] += float((entropy * mask).sum())
    sums["clipped"] += float((clipped.float() * mask).sum())
    sums["tokens"] += float(mask.sum())
    return int(skipped)


def summarise(sums: dict[str, float], grad_norms: list[float], skipped: int, updates: int,
              with_kl: bool, d: eng.Dist) -> dict[str, float]:
    """Reduce the per-rank sums over ranks into per-token means."""
    totals = dict(zip(STAT_KEYS, eng.all_reduce_sum([sums[k] for k in STAT_KEYS], d.device,
                                                    d.world), strict=True))
    tokens = max(totals["tokens"], 1.0)
    out = {
        "loss/pg": totals["loss"] / updates,
        "policy/entropy": totals["entropy"] / tokens,
        "policy/clip_frac": totals["clipped"] / tokens,
        # mean |log p_sampler - log p_trainer| per generated token, before the first update
        "rollout/logprob_diff": totals["lp_diff"] / max(totals["lp_tokens"], 1.0),
        "train/skipped_updates": float(skipped),
    }
    if with_kl:
        out["policy/kl"] = totals["kl"] / tokens
    if grad_norms:
        out["train/grad_norm"] = float(np.mean(grad_norms))
    return out
