"""Policy-gradient loss pieces: token log-probs, clipped surrogate, loss aggregation.

Loss aggregation is expressed as per-token *weights* so that a mode keeps its meaning under
gradient accumulation and several ranks: the caller passes the global sequence and token
counts, and the sum of ``weights * token_loss`` over all micro-batches and ranks equals the
loss of the whole batch.
"""

from __future__ import annotations

import torch

LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def _check_mode(mode: str) -> None:
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r}: allowed values are {', '.join(LOSS_AGG_MODES)}")


def token_loss_weights(
    mask: torch.Tensor,  # [B, T] 1 on tokens that carry loss
    mode: str,
    num_seqs: float | None = None,
    num_tokens: float | None = None,
    norm_constant: float | None = None,
) -> torch.Tensor:  # [B, T]
    """Weights w with aggregated loss = (w * token_loss).sum().

    - ``seq-mean-token-mean`` (GRPO): m_it / |o_i| / num_seqs. Each token of a sequence weighs
      1/|o_i|: the length bias Dr. GRPO points out.
    - ``token-mean`` (DAPO): m_it / num_tokens. Every token weighs the same.
    - ``seq-mean-token-sum-norm`` (Dr. GRPO): m_it / (num_seqs * C), C a constant (the cap).

    ``num_seqs`` counts rows with at least one unmasked token and ``num_tokens`` sums the mask;
    pass global values when ``mask`` is a micro-batch. Fully masked rows (e.g. truncated
    completions under overlong filtering) get weight 0 and are not counted (TRL #6369).
    """
    _check_mode(mode)
    m = mask.float()
    row_tokens = m.sum(dim=1, keepdim=True)  # [B, 1]
    seqs = float((row_tokens > 0).sum()) if num_seqs is None else float(num_seqs)
    tokens = float(m.sum()) if num_tokens is None else float(num_tokens)
    if mode == "token-mean":
        return m / tokens if tokens > 0 else torch.zeros_like(m)
    if seqs <= 0:
        return torch.zeros_like(m)
    if mode == "seq-mean-token-mean":
        return m / row_tokens.clamp(min=1) / seqs
    if norm_constant is None or norm_constant <= 0:
        raise ValueError("seq-mean-token-sum-norm needs a positive norm_constant (e.g. the cap)")
    return m / (seqs * float(norm_constant))


def aggregate_loss(
    token_loss: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T]
    mode: str,
    norm_constant: float | None = None,
) -> torch.Tensor:  # []
    """The direct formulas of LITERATURE.md (reference for :func:`token_loss_weights`)."""
    _check_mode(mode)
    m = mask.float()
    row_tokens = m.sum(dim=1)  # [B]
    present = row_tokens > 0
    if mode == "token-mean":
        return (token_loss * m).sum() / m.sum().clamp(min=1)
    if not present.any():
        return (token_loss * m).sum()
    if mode == "seq-mean-token-mean":
        per_seq = (token_loss * m).sum(dim=1)[present] / row_tokens[present]
        return per_seq.mean()
    if norm_constant is None or norm_constant <= 0:
        raise ValueError("seq-mean-token-sum-norm needs a positive norm_constant (e.g. the cap)")
    return (token_loss * m).sum() / (present.sum() * norm_constant)


def policy_gradient_loss(
    logprobs: torch.Tensor,  # [B, T] current policy
    old_logprobs: torch.Tensor,  # [B, T] policy that sampled (or logprobs.detach())
    advantages: torch.Tensor,  # [B]
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B, T] loss, [B, T] bool clipped)
    """PPO clipped surrogate, -min(r A, clip(r, 1-eps_low, 1+eps_high) A), per token.

    Separate low/high ratios give DAPO's clip-higher (0.2 / 0.28).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]  # [B, 1]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped  # the clipped branch was the minimum
    return loss, was_clipped


def gather_token_logprobs(
    logits: torch.Tensor,  # [B, T, V]
    tokens: torch.Tensor,  # [B, T]
    temperature: float = 1.0,
) -> torch.Tensor:  # [B, T]
    """log softmax(logits / T) at ``tokens``: logsumexp avoids a second [B, T, V] copy."""
    scaled = logits.float() / temperature if temperature != 1.0 else logits.float()
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:  # [B, T]
    """Entropy of the sampling distribution softmax(logits / T) at each position."""
    scaled = logits.float() / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
