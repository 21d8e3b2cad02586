"""Loss aggregation modes, clipped surrogate, KL and log-prob helpers on hand-computed values."""

from __future__ import annotations

import pytest
import torch

from grpo_cli.algo.kl import kl_k3
from grpo_cli.algo.losses import (
    aggregate_loss,
    gather_token_logprobs,
    policy_gradient_loss,
    token_entropy,
    token_loss_weights,
)

# Two completions of 2 and 8 tokens (the example), padded to 8.
MASK = torch.tensor([[1.0] * 2 + [0.0] * 6, [1.0] * 8])


def test_seq_mean_token_mean_weights_short_tokens_more() -> None:
    w = token_loss_weights(MASK, "seq-mean-token-mean")
    assert w[0, 0].item() == pytest.approx(1 / 4)  # 1/|o|=1/2, over 2 sequences
    assert w[1, 0].item() == pytest.approx(1 / 16)
    assert w[0, 2:].sum().item() == 0.0


def test_token_mean_weights_every_token_equally() -> None:
    w = token_loss_weights(MASK, "token-mean")
    assert torch.allclose(w[MASK.bool()], torch.full((10,), 1 / 10))


def test_sum_norm_uses_the_constant() -> None:
    w = token_loss_weights(MASK, "seq-mean-token-sum-norm", norm_constant=8)
    assert torch.allclose(w[MASK.bool()], torch.full((10,), 1 / 16))
    with pytest.raises(ValueError, match="norm_constant"):
        token_loss_weights(MASK, "seq-mean-token-sum-norm")


def test_unknown_mode_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="token-mean"):
        token_loss_weights(MASK, "seq-sum")


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_masked_rows_leave_the_denominators(mode: str) -> None:
    """Overlong filtering zeroes a row; it must not count as a sequence (TRL #6369)."""
    mask = torch.cat([MASK, torch.zeros(1, 8)])
    loss = torch.rand(3, 8)
    with_masked = aggregate_loss(loss, mask, mode, norm_constant=8)
    without = aggregate_loss(loss[:2], MASK, mode, norm_constant=8)
    torch.testing.assert_close(with_masked, without)
    w = token_loss_weights(mask, mode, norm_constant=8)
    torch.testing.assert_close((w * loss).sum(), without)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_with_global_counts_equal_the_full_batch(mode: str) -> None:
    torch.manual_seed(0)
    lengths = [3, 7, 1, 5, 8, 2]
    mask = torch.stack([torch.arange(8) < n for n in lengths]).float()
    logits = torch.randn(6, 8, requires_grad=True)
    full = aggregate_loss(logits**2, mask, mode, norm_constant=8)
    (g_full,) = torch.autograd.grad(full, logits)

    seqs, tokens = float((mask.sum(1) > 0).sum()), float(mask.sum())
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 5), slice(5, 6)):
        w = token_loss_weights(mask[rows], mode, num_seqs=seqs, num_tokens=tokens,
                               norm_constant=8)
        total = total + (w * logits[rows] ** 2).sum()
    (g_micro,) = torch.autograd.grad(total, logits)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(g_micro, g_full)


def test_modes_differ_on_unequal_lengths() -> None:
    loss = torch.ones(2, 8) * torch.tensor([[1.0], [3.0]])
    a = aggregate_loss(loss, MASK, "seq-mean-token-mean")  # (1 + 3) / 2
    b = aggregate_loss(loss, MASK, "token-mean")  # (2*1 + 8*3) / 10
    assert a.item() == pytest.approx(2.0) and b.item() == pytest.approx(2.6)


def test_clipped_surrogate_hand_values() -> None:
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    loss, clipped = policy_gradient_loss(logp, old, torch.tensor([1.0]), 0.2, 0.28)
    # A>0: ratio 1.5 capped at 1.28; ratio 0.5 keeps 0.5 (min); 1.1 inside the range.
    torch.testing.assert_close(loss, -torch.tensor([[1.28, 0.5, 1.1]]))
    assert clipped.tolist() == [[True, False, False]]
    loss_neg, clipped_neg = policy_gradient_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.28)
    # A<0: -min(-r, -clip(r)) = max(r, clip(r)): 1.5 stays, 0.5 -> 0.8.
    torch.testing.assert_close(loss_neg, torch.tensor([[1.5, 0.8, 1.1]]))
    assert clipped_neg.tolist() == [[False, True, False]]


def test_kl_k3_is_zero_at_equality_and_positive_otherwise() -> None:
    a = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.all(kl_k3(a, a) == 0)
    d = torch.tensor(0.3)
    assert kl_k3(torch.tensor(-1.0), torch.tensor(-0.7)).item() == pytest.approx(
        (torch.exp(d) - d - 1).item())
    assert torch.isfinite(kl_k3(torch.tensor(-100.0), torch.tensor(0.0)))


def test_logprobs_and_entropy_match_softmax() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5)
    tokens = torch.randint(0, 5, (2, 3))
    lp = gather_token_logprobs(logits, tokens, temperature=0.5)
    ref = torch.log_softmax(logits / 0.5, -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(lp, ref)
    uniform = token_entropy(torch.zeros(1, 1, 4))
    assert uniform.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
