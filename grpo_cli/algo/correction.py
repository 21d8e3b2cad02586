"""Sampler-trainer mismatch correction: per-token weights from the trainer's and the
sampler's log-probs of the same tokens. Pure tensor functions.

The sampler (vLLM in bf16, another kernel) and the trainer disagree slightly on the
probabilities of what was sampled, more so on long sequences, which makes the update
off-policy. With ratio r_t = pi_trainer(o_t) / pi_sampler(o_t) (the trainer at the weights
that sampled):

- ``tis``: truncated importance sampling (Yao et al. 2025, "Your efficient RL framework
  secretly brings you off-policy RL training"): w_t = min(r_t, cap).
- ``icepop`` (Ling team 2025, Ring-1T): w_t = r_t inside [low, high], 0 outside (tokens
  the engines disagree on too much are dropped).
- ``seq_mask``: a sequence whose geometric-mean ratio exp(mean_t log r_t) leaves
  [low, high] gets w = 0 on every token, else 1 (veRL's geometric rejection).

The weights multiply the clipped surrogate of each token and carry no gradient; the loss
keeps its global normalisers. As veRL (``rollout_corr_helper.py``), the log-ratio is clamped
to [-20, 20] before exp.
"""

from __future__ import annotations

import torch

from grpo_cli.algo.losses import LOG_RATIO_CLAMP
from grpo_cli.config.schema import ROLLOUT_CORRECTIONS


def mismatch_log_ratio(
    trainer_logp: torch.Tensor,  # [B, T]
    sampler_logp: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T] 1 on generated tokens
) -> torch.Tensor:  # [B, T], 0 off the mask
    """log r_t = log pi_trainer - log pi_sampler on generated tokens, clamped to +-20."""
    lr = (trainer_logp.detach().float() - sampler_logp.float()).clamp(-LOG_RATIO_CLAMP,
                                                                      LOG_RATIO_CLAMP)
    return torch.where(mask > 0, lr, torch.zeros_like(lr))


def correction_weights(
    log_ratio: torch.Tensor,  # [B, T] from mismatch_log_ratio
    mask: torch.Tensor,  # [B, T] 1 on generated tokens
    mode: str,
    cap: float = 2.0,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:  # [B, T] float32, 0 off the mask
    """Each token's weight in the policy-gradient loss (see the module docstring)."""
    if mode not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"algorithm.rollout_correction={mode!r}: allowed "
                         f"{', '.join(ROLLOUT_CORRECTIONS)}")
    m = (mask > 0).float()  # [B, T]
    if mode == "none":
        return m
    if mode == "tis":
        return log_ratio.exp().clamp(max=cap) * m
    if low is None or high is None:
        raise ValueError(f"algorithm.rollout_correction={mode} needs both bounds, got "
                         f"low={low}, high={high}")
    if mode == "icepop":
        r = log_ratio.exp()  # [B, T]
        return torch.where((r >= low) & (r <= high), r, torch.zeros_like(r)) * m
    tokens = m.sum(dim=1)  # [B]
    geo = ((log_ratio * m).sum(dim=1) / tokens.clamp(min=1)).exp()  # [B] geometric mean
    keep = (geo >= low) & (geo <= high) & (tokens > 0)  # [B]
    return m * keep.float()[:, None]
