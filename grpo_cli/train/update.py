"""The policy update: ``trainer.updates_per_batch`` optimiser steps over one rollout batch.

Every token's loss weight comes from counts over the whole global update batch (all ranks,
all micro-batches), so the gradient is the same however the batch is split; DeepSpeed's
average over ranks is undone for the same reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from grpo_cli.algo.correction import correction_weights, mismatch_log_ratio
from grpo_cli.algo.kl import kl_k3
from grpo_cli.algo.losses import policy_gradient_loss, token_loss_weights
from grpo_cli.config.schema import RunConfig
from grpo_cli.train import engine as eng
from grpo_cli.train.batch import Batch, forward_logprobs, logprobs_no_grad, micro_batches, take

# Per-rank sums reduced over ranks at the end of the update (see `summarise`).
STAT_KEYS = ("loss", "entropy", "kl", "clipped", "tokens", "lp_diff", "lp_tokens")
# Per-row numbers of the batch (rollout columns), every run: the summed trainer-minus-sampler
# log-ratio over the generated tokens at the weights that sampled, and the policy's mean token
# entropy over the whole completion and over its first and last quarter (at the weights of
# the row's update: the sampling weights unless trainer.updates_per_batch > 1).
ROW_KEYS = ("logratio_sum", "entropy", "entropy_first_quarter", "entropy_last_quarter")
# ... and with a rollout correction the summed weight and the count of tokens it zeroed.
CORRECTION_ROW_KEYS = ("is_weight_sum", "is_masked_tokens")


def train_on_batch(
    policy: Any, b: Batch, cfg: RunConfig, cap: int, d: eng.Dist, ref_logp: torch.Tensor | None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Update the policy on the batch; returns the step's ``loss/``, ``policy/`` and
    ``train/`` metrics, reduced over ranks, and this rank's per-row :data:`ROW_KEYS` [N]."""
    t = cfg.trainer
    old_logp = None  # one update: the ratio is 1 and old log-probs are the detached current
    if t.updates_per_batch > 1:
        old_logp = logprobs_no_grad(policy, b, t.micro_batch_size, cfg.rollout.temperature,
                                    t.group_by_length, d.device)
    per_update = len(b.advantages) // t.updates_per_batch
    sums = dict.fromkeys(STAT_KEYS, 0.0)
    keys = ROW_KEYS + (CORRECTION_ROW_KEYS if cfg.algorithm.rollout_correction != "none" else ())
    rows_out = {k: torch.zeros(len(b.advantages), dtype=torch.float64) for k in keys}
    grad_norms: list[float] = []
    skipped = 0  # updates dropped for non-finite gradients
    for u in range(t.updates_per_batch):
        rows = slice(u * per_update, (u + 1) * per_update)
        skipped += optimiser_update(policy, b, rows, cfg, cap, d, old_logp, ref_logp, sums,
                                    rows_out)
        grad_norm = policy.get_global_grad_norm()
        if grad_norm is not None and np.isfinite(float(grad_norm)):
            grad_norms.append(float(grad_norm))
    stats = summarise(sums, grad_norms, skipped, t.updates_per_batch, ref_logp is not None, d)
    return stats, {k: v.numpy() for k, v in rows_out.items()}


def global_counts(loss_mask: torch.Tensor, d: eng.Dist) -> tuple[float, float]:
    """Sequences that carry loss and their loss tokens, over every rank's rows of this
    update: the denominators of ``token_loss_weights``. ``loss_mask`` is [n, T]."""
    local = [float((loss_mask.sum(1) > 0).sum()), float(loss_mask.sum())]
    num_seqs, num_tokens = eng.all_reduce_sum(local, d.device, d.world)
    return num_seqs, num_tokens


def optimiser_update(
    policy: Any, b: Batch, rows: slice, cfg: RunConfig, cap: int, d: eng.Dist,
    old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, sums: dict[str, float],
    rows_out: dict[str, torch.Tensor],
) -> int:
    """One optimiser step over ``rows``, accumulated over micro-batches; returns 1 when it
    was skipped for non-finite gradients. Adds this rank's statistics to ``sums`` and the
    per-row ones to ``rows_out``."""
    counts = global_counts(b.loss_mask[rows], d)
    t = cfg.trainer
    skipped = 0
    for idx in micro_batches(b, rows, t.micro_batch_size, t.group_by_length):
        skipped += micro_step(policy, b, idx, cfg, cap, d, counts, old_logp, ref_logp, sums,
                              rows_out)
    return skipped


def micro_step(
    policy: Any, b: Batch, idx: torch.Tensor, cfg: RunConfig, cap: int, d: eng.Dist,
    counts: tuple[float, float], old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
    sums: dict[str, float], rows_out: dict[str, torch.Tensor],
) -> int:
    """Forward, loss and backward of the rows ``idx`` (DeepSpeed steps at the window's end).
    The updates of a batch take disjoint rows, so each row is compared with the sampler
    once, at the weights that sampled (``old``)."""
    a = cfg.algorithm
    m = take(b, idx, trim=cfg.trainer.group_by_length).to(d.device)  # [n, P' + T'] rows
    width = m.completion_ids.shape[1]  # T'
    mask = m.loss_mask  # [n, T']
    logp, entropy = forward_logprobs(policy, m, cfg.rollout.temperature, with_entropy=True)
    assert entropy is not None
    old = logp.detach() if old_logp is None else old_logp[idx, :width]  # on the device
    # generated tokens are where the completion part of the attention mask is 1
    generated = m.attention_mask[:, m.prompt_width:].float()  # [n, T']
    # the trainer at the weights that sampled vs the sampler: ~0 for hf in fp32
    log_ratio = mismatch_log_ratio(old, m.sampling_logprobs, generated)  # [n, T']
    is_weights = correction_weights(log_ratio, generated, a.rollout_correction,
                                    a.rollout_correction_cap, a.rollout_correction_low,
                                    a.rollout_correction_high)  # [n, T']
    sums["lp_diff"] += float(((old - m.sampling_logprobs).abs() * generated).sum())
    sums["lp_tokens"] += float(generated.sum())
    record_rows(rows_out, idx, log_ratio, is_weights, generated, entropy.detach())
    token_loss, clipped = policy_gradient_loss(
        logp, old, m.advantages, a.clip_ratio_low, a.clip_ratio_high
    )  # [n, T] each
    if a.rollout_correction != "none":
        token_loss = token_loss * is_weights
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


def record_rows(rows_out: dict[str, torch.Tensor], idx: torch.Tensor, log_ratio: torch.Tensor,
                weights: torch.Tensor, generated: torch.Tensor, entropy: torch.Tensor) -> None:
    """Per-row numbers over the generated tokens of rows ``idx`` into ``rows_out`` (host);
    every tensor is [n, T'] over the rows' completion positions."""
    rows_out["logratio_sum"][idx] = log_ratio.sum(dim=1).double().cpu()
    whole, first, last = position_means(entropy, generated)
    rows_out["entropy"][idx] = whole.double().cpu()
    rows_out["entropy_first_quarter"][idx] = first.double().cpu()
    rows_out["entropy_last_quarter"][idx] = last.double().cpu()
    if "is_weight_sum" in rows_out:
        rows_out["is_weight_sum"][idx] = weights.sum(dim=1).double().cpu()
        zeroed = ((weights == 0) & (generated > 0)).sum(dim=1)  # [n]
        rows_out["is_masked_tokens"][idx] = zeroed.double().cpu()


def position_means(values: torch.Tensor, generated: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row means of ``values`` [n, T'] over the generated tokens (``generated`` [n, T']:
    1 on a row's first L positions), over its first ceil(L/4) and over its last ceil(L/4):
    where along a response a quantity moves (a collapse shows at the end of long answers
    first). Each [n]; NaN for a row with no generated token."""
    length = generated.sum(dim=1, keepdim=True)  # [n, 1]
    quarter = torch.ceil(length / 4)
    pos = torch.arange(generated.shape[1], device=generated.device).unsqueeze(0)  # [1, T']
    first = generated * (pos < quarter)
    last = generated * (pos >= length - quarter)

    def mean(mask: torch.Tensor) -> torch.Tensor:
        return (values * mask).sum(dim=1) / mask.sum(dim=1)

    return mean(generated), mean(first), mean(last)


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
        # mean |log p_sampler - log p_trainer| per generated token, at the sampling weights
        "rollout/logprob_diff": totals["lp_diff"] / max(totals["lp_tokens"], 1.0),
        "train/skipped_updates": float(skipped),
    }
    if with_kl:
        out["policy/kl"] = totals["kl"] / tokens
    if grad_norms:
        out["train/grad_norm"] = float(np.mean(grad_norms))
    return out
