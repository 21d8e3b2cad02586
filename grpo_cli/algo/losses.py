"""Policy-gradient loss pieces: token log-probs, clipped surrogate, loss aggregation.

Loss aggregation is expressed as per-token *weights* so that a mode keeps its meaning under
gradient accumulation and several ranks: the caller passes the global sequence and token
counts, and the sum of ``weights * token_loss`` over all micro-batches and ranks equals the
loss of the whole batch. The aggregation mode is where GRPO's length bias lives (Dr. GRPO,
Liu et al. 2025): see the table in LITERATURE.md.
"""

from __future__ import annotations

import torch

from grpo_cli.config.schema import LOSS_AGG_MODES

__all__ = ["LOSS_AGG_MODES"]  # re-exported: the modes belong to the loss

# exp() of a log-ratio beyond this overflows nothing useful; veRL clamps at the same value.
LOG_RATIO_CLAMP = 20.0


def _check_mode(mode: str) -> None:
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r}: allowed values are {', '.join(LOSS_AGG_MODES)}")


def _check_norm_constant(mode: str, norm_constant: float | None) -> float:
    if mode != "seq-mean-token-sum-norm":
        return 1.0
    if norm_constant is None or not norm_constant > 0:
        raise ValueError(
            f"loss_agg_mode=seq-mean-token-sum-norm needs a positive norm_constant C "
            f"(algorithm.loss_norm_constant, e.g. the response cap), got {norm_constant!r}"
        )
    return float(norm_constant)


def _float_mask(mask: torch.Tensor) -> torch.Tensor:
    """0/1 mask as float32 (or float64 if given so): bf16 would round 1/|o| visibly."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    return mask if mask.dtype in (torch.float32, torch.float64) else mask.float()


def token_loss_weights(
    mask: torch.Tensor,  # [B, T] 1 on tokens that carry loss
    mode: str,
    num_seqs: float | None = None,
    num_tokens: float | None = None,
    norm_constant: float | None = None,
) -> torch.Tensor:  # [B, T]
    """Weights w with aggregated loss = (w * token_loss).sum().

    - ``seq-mean-token-mean`` (original GRPO): m_it / |o_i| / num_seqs. Each token of a
      sequence weighs 1/|o_i|: the length bias Dr. GRPO points out.
    - ``token-mean`` (DAPO): m_it / num_tokens. Every token in the batch weighs the same.
    - ``seq-mean-token-sum-norm`` (Dr. GRPO): m_it / (num_seqs * C), C a constant (the cap).

    ``num_seqs`` counts rows with at least one unmasked token and ``num_tokens`` sums the mask;
    pass the global values when ``mask`` is one micro-batch (or one rank's share) of the batch,
    otherwise they are computed from ``mask``. Fully masked rows (e.g. truncated completions
    under overlong filtering) get weight 0 and are not counted (TRL #6369 counted them). No
    tokens at all gives all-zero weights, never NaN. Note that 0 * inf is NaN: masked positions
    of ``token_loss`` must be finite (or use :func:`aggregate_loss`).
    """
    _check_mode(mode)
    c = _check_norm_constant(mode, norm_constant)
    m = _float_mask(mask)  # [B, T]
    row_tokens = m.sum(dim=1, keepdim=True)  # [B, 1] = |o_i| (0 for masked rows)
    seqs = float((row_tokens > 0).sum()) if num_seqs is None else float(num_seqs)
    tokens = float(m.sum()) if num_tokens is None else float(num_tokens)
    if mode == "token-mean":
        return m / tokens if tokens > 0 else torch.zeros_like(m)
    if seqs <= 0:
        return torch.zeros_like(m)
    if mode == "seq-mean-token-mean":
        return m / row_tokens.clamp(min=1) / seqs  # masked rows: 0 / 1
    return m / (seqs * c)


def aggregate_loss(
    token_loss: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T]
    mode: str,
    norm_constant: float | None = None,
) -> torch.Tensor:  # []
    """The direct formulas of LITERATURE.md on one whole batch.

    The reference :func:`token_loss_weights` is tested against. Masked positions are ignored
    even when they hold inf/NaN; fully masked rows leave every denominator; an empty batch
    gives 0 (still attached to the graph).
    """
    _check_mode(mode)
    c = _check_norm_constant(mode, norm_constant)
    m = _float_mask(mask)  # [B, T]
    if token_loss.shape != m.shape:
        raise ValueError(f"token_loss {tuple(token_loss.shape)} and mask {tuple(m.shape)} differ")
    kept = torch.where(m > 0, token_loss * m, torch.zeros_like(token_loss))  # [B, T]
    row_tokens = m.sum(dim=1)  # [B]
    present = row_tokens > 0  # [B]
    if not present.any():
        return kept.sum()  # 0
    if mode == "token-mean":
        return kept.sum() / m.sum()
    if mode == "seq-mean-token-mean":
        return (kept.sum(dim=1)[present] / row_tokens[present]).mean()
    return kept.sum() / (present.sum() * c)


def policy_gradient_loss(
    logprobs: torch.Tensor,  # [B, T] current policy
    old_logprobs: torch.Tensor,  # [B, T] policy that sampled (or logprobs.detach())
    advantages: torch.Tensor,  # [B]
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B, T] loss, [B, T] bool clipped)
    """PPO clipped surrogate, l = -min(r A, clip(r, 1-eps_low, 1+eps_high) A), per token.

    Separate low/high ratios give DAPO's clip-higher (0.2 / 0.28). ``clipped`` marks tokens
    where the clipped branch won (so they get no gradient), as veRL's ``pg_clipfrac``. The
    log-ratio is clamped to [-20, 20] before exp, as veRL does, so a stale token cannot
    overflow; inside that range (ratios 2e-9 .. 5e8) nothing changes.
    """
    if logprobs.shape != old_logprobs.shape or logprobs.dim() != 2:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and old_logprobs {tuple(old_logprobs.shape)} "
            "must both be [B, T]"
        )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [B={logprobs.shape[0]}]")
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    adv = advantages.to(ratio.dtype)[:, None]  # [B, 1]
    unclipped = ratio * adv  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv  # [B, T]
    loss = -torch.minimum(unclipped, clipped)  # [B, T]
    was_clipped = clipped < unclipped  # [B, T] the clipped (constant) branch is the minimum
    return loss, was_clipped


def _scaled_float(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logits / temperature with at most one new [B, T, V] tensor.

    Low-precision logits are upcast (bf16 log-probs are visibly wrong); the division then
    happens in place on that fresh copy. float32 input is never modified.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    x = logits.float()  # [B, T, V]; the same tensor when already float32
    if temperature == 1.0:
        return x
    if x.data_ptr() == logits.data_ptr():
        return x / temperature
    return x.div_(temperature)


def gather_token_logprobs(
    logits: torch.Tensor,  # [B, T, V]
    tokens: torch.Tensor,  # [B, T]
    temperature: float = 1.0,
) -> torch.Tensor:  # [B, T] float32
    """log softmax(logits / T) at ``tokens``, computed as x_tok - logsumexp(x).

    Dividing by the sampling temperature makes these the log-probs of the distribution that
    generated the tokens (as vLLM/veRL do). logsumexp avoids keeping a full log-softmax
    [B, T, V] tensor next to the scaled logits.
    """
    x = _scaled_float(logits, temperature)  # [B, T, V]
    picked = x.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(x, dim=-1)  # [B, T]


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:  # [B, T]
    """Entropy of softmax(logits / T) at each position: logsumexp(x) - sum_v p_v x_v.

    The policy-entropy metric (entropy collapse is what DAPO's clip-higher fights). Logits are
    assumed finite. Without autograd the product is taken in place to save a [B, T, V] copy.
    """
    x = _scaled_float(logits, temperature)  # [B, T, V]
    return _entropy(x, torch.logsumexp(x, dim=-1))


def _entropy(x: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:  # [B, T]
    """Entropy from scaled logits x [B, T, V] and their logsumexp [B, T]."""
    p = (x - lse.unsqueeze(-1)).exp()  # [B, T, V] softmax
    needs_graph = torch.is_grad_enabled() and x.requires_grad
    return lse - (p * x if needs_graph else p.mul_(x)).sum(dim=-1)


def token_logprobs_with_entropy(
    logits: torch.Tensor,  # [B, T, V]
    tokens: torch.Tensor,  # [B, T]
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:  # [B, T] each, float32
    """:func:`gather_token_logprobs` (with autograd) and :func:`token_entropy` of the detached
    logits from one scaled copy and one logsumexp: the training forward needs both, and at a
    49k-token vocabulary every [B, T, V] pass counts."""
    x = _scaled_float(logits, temperature)  # [B, T, V]
    lse = torch.logsumexp(x, dim=-1)  # [B, T]
    logp = x.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1) - lse  # [B, T]
    with torch.no_grad():
        entropy = _entropy(x.detach(), lse.detach())  # [B, T]
    return logp, entropy


# Elements of [B, T, V] logits that :func:`chunked_logprobs` turns into fp32 at a time:
# 2**26 is 256 MB (e.g. 5 rows x 257 positions of a 49k vocabulary). The toy's micro-batches
# fit in one block.
CHUNK_ELEMENTS = 2**26


def chunk_plan(rows: int, positions: int, vocab: int,
               budget: int = CHUNK_ELEMENTS) -> list[tuple[slice, slice]]:
    """(rows, positions) blocks of at most ``budget`` logits: whole rows while a row fits,
    else one row at a time cut along its positions."""
    per_row = positions * vocab
    if per_row <= budget:
        step = max(1, budget // max(per_row, 1))
        return [(slice(r, min(r + step, rows)), slice(0, positions))
                for r in range(0, rows, step)]
    cols = max(1, budget // vocab)
    return [(slice(r, r + 1), slice(t, min(t + cols, positions)))
            for r in range(rows) for t in range(0, positions, cols)]


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(logits / T) at ``tokens`` and the entropy, block by block; backward
    writes d logp / d logits = (onehot - softmax) / T into one gradient tensor, block by
    block. Autograd over the same formulas would keep every fp32 intermediate (the scaled
    copy, the exponentials) at full [B, T, V] size until backward, and its slicing would
    allocate a full-size gradient per block."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor,
                tokens: torch.Tensor, temperature: float, budget: int,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = tokens.shape[1]  # T; logits may hold more positions after it (ignored)
        logp = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)  # [B, T]
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else logp.new_empty(0)
        for rows, cols in chunk_plan(tokens.shape[0], width, logits.shape[-1], budget):
            x = _scaled_float(logits[rows, cols], temperature)  # [b, t, V]
            lse[rows, cols] = torch.logsumexp(x, dim=-1)
            picked = x.gather(-1, tokens[rows, cols].long().unsqueeze(-1)).squeeze(-1)
            logp[rows, cols] = picked - lse[rows, cols]
            if with_entropy:
                entropy[rows, cols] = _entropy(x, lse[rows, cols])
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.budget = temperature, budget
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_logp: torch.Tensor,
                 grad_entropy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, tokens, lse = ctx.saved_tensors
        width = tokens.shape[1]
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)  # [B, T', V]
        grad[:, width:] = 0  # positions past T (the LM head's last) carry no loss
        for rows, cols in chunk_plan(tokens.shape[0], width, logits.shape[-1], ctx.budget):
            x = _scaled_float(logits[rows, cols], ctx.temperature)  # [b, t, V]
            g = grad_logp[rows, cols].float()  # [b, t]
            block = (x - lse[rows, cols].unsqueeze(-1)).exp_().mul_(-g.unsqueeze(-1))
            block.scatter_add_(-1, tokens[rows, cols].long().unsqueeze(-1), g.unsqueeze(-1))
            if ctx.temperature != 1.0:
                block.div_(ctx.temperature)
            grad[rows, cols] = block
        return grad, None, None, None, None


def chunked_logprobs(
    logits: torch.Tensor,  # [B, T', V], T' >= T: position t predicts tokens[:, t]
    tokens: torch.Tensor,  # [B, T]
    temperature: float = 1.0,
    budget: int = CHUNK_ELEMENTS,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # [B, T] each, float32
    """:func:`token_logprobs_with_entropy` (log-probs with autograd, entropy without) over
    blocks of at most ``budget`` logits; without ``with_entropy`` (the old and reference
    log-probs) the entropy is neither computed nor returned.

    At a real vocabulary the logits are the largest tensors of a step: 32 rows x 257
    positions x 49,152 is 1.6 GB in fp32. Here the fp32 work on them exists for one block
    at a time, in forward and in backward; what stays is the logits and their gradient.
    Each position's numbers are those of the unchunked formulas (every reduction runs over
    the vocabulary, within a position). Logits beyond T positions (the LM head's output for
    the last token) are ignored and get a zero gradient."""
    if logits.shape[:1] != tokens.shape[:1] or logits.shape[1] < tokens.shape[1]:
        raise ValueError(f"logits {tuple(logits.shape)} do not cover tokens "
                         f"{tuple(tokens.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    logp, entropy = _ChunkedLogprobs.apply(logits, tokens, temperature, budget, with_entropy)
    return logp, entropy if with_entropy else None
