"""Loss aggregation modes, clipped surrogate, KL and log-prob helpers on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_cli.algo.kl import kl_k3
from grpo_cli.algo.losses import (
    LOSS_AGG_MODES,
    aggregate_loss,
    chunk_plan,
    chunked_logprobs,
    gather_token_logprobs,
    policy_gradient_loss,
    token_entropy,
    token_logprobs_with_entropy,
    token_loss_weights,
)

# Two completions of 2 and 8 tokens (the example), padded to 8.
MASK = torch.tensor([[1.0] * 2 + [0.0] * 6, [1.0] * 8])
C = 8.0


def _mask(lengths: list[int], width: int = 8) -> torch.Tensor:
    return torch.stack([torch.arange(width) < n for n in lengths]).float()


# --- the check: per-token weights of a 2-token and an 8-token completion -----------


def test_seq_mean_token_mean_weights_short_tokens_more() -> None:
    w = token_loss_weights(MASK, "seq-mean-token-mean")
    expected = torch.zeros(2, 8)
    expected[0, :2] = 1 / 4  # 1/|o|=1/2, over 2 sequences
    expected[1, :] = 1 / 16  # 1/8 over 2 sequences
    torch.testing.assert_close(w, expected)


def test_token_mean_weights_every_token_equally() -> None:
    w = token_loss_weights(MASK, "token-mean")
    torch.testing.assert_close(w, MASK / 10)  # 10 tokens in the batch
    assert w[0, 0].item() == pytest.approx(1 / 10) and w[1, 7].item() == pytest.approx(1 / 10)


def test_sum_norm_uses_the_constant() -> None:
    w = token_loss_weights(MASK, "seq-mean-token-sum-norm", norm_constant=C)
    torch.testing.assert_close(w, MASK / (2 * C))  # 1/(2C) = 1/16 on every real token
    with pytest.raises(ValueError, match="norm_constant"):
        token_loss_weights(MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="norm_constant"):
        token_loss_weights(MASK, "seq-mean-token-sum-norm", norm_constant=0)


def test_equal_advantage_gives_length_dependent_gradients_only_per_sequence() -> None:
    """End to end through the surrogate: at ratio 1, d loss / d logp_it = -A w_it."""
    for mode, short, long in (("seq-mean-token-mean", 1 / 4, 1 / 16),
                              ("token-mean", 1 / 10, 1 / 10),
                              ("seq-mean-token-sum-norm", 1 / (2 * C), 1 / (2 * C))):
        logp = torch.full((2, 8), -1.0, requires_grad=True)
        token_loss, _ = policy_gradient_loss(logp, logp.detach(), torch.ones(2), 0.2, 0.28)
        w = token_loss_weights(MASK, mode, norm_constant=C)
        (grad,) = torch.autograd.grad((w * token_loss).sum(), logp)
        assert grad[0, 0].item() == pytest.approx(-short), mode
        assert grad[1, 0].item() == pytest.approx(-long), mode
        assert grad[0, 2:].abs().sum().item() == 0.0  # padding gets nothing


def test_unknown_mode_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="seq-mean-token-mean, token-mean, seq-mean-token-sum"):
        token_loss_weights(MASK, "seq-sum")
    with pytest.raises(ValueError, match="allowed"):
        aggregate_loss(torch.zeros(2, 8), MASK, "sum")


def test_mismatched_loss_and_mask_shapes_name_both() -> None:
    with pytest.raises(ValueError, match=r"token_loss \(2, 7\) and mask \(2, 8\) differ"):
        aggregate_loss(torch.zeros(2, 7), MASK, "token-mean")


# --- masked rows, empty batches ---------------------------------------------------------


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_masked_rows_leave_the_denominators(mode: str) -> None:
    """Overlong filtering zeroes a row; it must not count as a sequence (TRL #6369)."""
    mask = torch.cat([MASK, torch.zeros(1, 8)])
    w = token_loss_weights(mask, mode, norm_constant=C)
    torch.testing.assert_close(w[:2], token_loss_weights(MASK, mode, norm_constant=C))
    assert w[2].abs().sum().item() == 0.0
    loss = torch.rand(3, 8)
    without = aggregate_loss(loss[:2], MASK, mode, norm_constant=C)
    torch.testing.assert_close(aggregate_loss(loss, mask, mode, norm_constant=C), without)
    torch.testing.assert_close((w * loss).sum(), without)


def test_masked_row_hand_values() -> None:
    mask = torch.cat([MASK, torch.zeros(1, 8)])
    # still 2 sequences, not 3: 1/4 and 1/16, and 1/(2C)
    assert token_loss_weights(mask, "seq-mean-token-mean")[0, 0].item() == pytest.approx(1 / 4)
    sn = token_loss_weights(mask, "seq-mean-token-sum-norm", norm_constant=C)
    assert sn[1, 0].item() == pytest.approx(1 / (2 * C))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_empty_batch_and_zero_tokens_give_zero_not_nan(mode: str) -> None:
    for mask in (torch.zeros(0, 8), torch.zeros(3, 8)):
        w = token_loss_weights(mask, mode, norm_constant=C)
        assert w.shape == mask.shape and torch.equal(w, torch.zeros_like(mask))
        agg = aggregate_loss(torch.ones_like(mask), mask, mode, norm_constant=C)
        assert agg.item() == 0.0
    # a micro-batch of real tokens whose global counts say zero (nothing anywhere)
    w = token_loss_weights(MASK, mode, num_seqs=0, num_tokens=0, norm_constant=C)
    assert torch.equal(w, torch.zeros_like(MASK))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_aggregate_ignores_non_finite_values_under_the_mask(mode: str) -> None:
    loss = torch.ones(2, 8)
    loss[0, 5] = float("nan")
    loss[0, 6] = float("inf")
    agg = aggregate_loss(loss, MASK, mode, norm_constant=C)
    expected = {"seq-mean-token-mean": 1.0, "token-mean": 1.0,
                "seq-mean-token-sum-norm": 10 / (2 * C)}[mode]
    assert agg.item() == pytest.approx(expected)


def test_bool_mask_is_accepted() -> None:
    w = token_loss_weights(MASK.bool(), "seq-mean-token-mean")
    assert w.dtype == torch.float32 and w[0, 0].item() == pytest.approx(1 / 4)


# --- aggregate_loss == weights, and micro-batches with global counts ----------------------


def test_modes_differ_on_unequal_lengths() -> None:
    loss = torch.ones(2, 8) * torch.tensor([[1.0], [3.0]])
    assert aggregate_loss(loss, MASK, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert aggregate_loss(loss, MASK, "token-mean").item() == pytest.approx(2.6)  # 26 / 10
    sn = aggregate_loss(loss, MASK, "seq-mean-token-sum-norm", norm_constant=C)
    assert sn.item() == pytest.approx(26 / 16)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_weights_reproduce_the_direct_formula(mode: str) -> None:
    torch.manual_seed(2)
    mask = _mask([3, 0, 7, 1, 8, 5])
    loss = torch.randn(6, 8)
    w = token_loss_weights(mask, mode, norm_constant=C)
    torch.testing.assert_close((w * loss).sum(), aggregate_loss(loss, mask, mode, C))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batches_with_global_counts_equal_the_full_batch(mode: str) -> None:
    torch.manual_seed(0)
    mask = _mask([3, 7, 0, 1, 5, 8, 0, 2])  # masked rows inside micro-batches
    x = torch.randn(8, 8, requires_grad=True)
    full = aggregate_loss(x**2, mask, mode, norm_constant=C)
    (g_full,) = torch.autograd.grad(full, x)

    seqs, tokens = float((mask.sum(1) > 0).sum()), float(mask.sum())
    assert (seqs, tokens) == (6.0, 26.0)
    total = torch.zeros(())
    # uneven micro-batches; the last holds only a masked row and a 2-token row
    for rows in (slice(0, 2), slice(2, 5), slice(5, 6), slice(6, 8)):
        w = token_loss_weights(mask[rows], mode, num_seqs=seqs, num_tokens=tokens,
                               norm_constant=C)
        total = total + (w * x[rows] ** 2).sum()
    (g_micro,) = torch.autograd.grad(total, x)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(g_micro, g_full)


def test_micro_batches_with_local_counts_would_be_wrong() -> None:
    """Guards the test above: per-micro-batch denominators change token-mean's meaning."""
    mask = _mask([1, 8])
    loss = torch.tensor([[4.0] * 8, [1.0] * 8])
    full = aggregate_loss(loss, mask, "token-mean")  # (4 + 8) / 9
    local = sum((token_loss_weights(mask[i : i + 1], "token-mean") * loss[i : i + 1]).sum()
                for i in range(2))  # 4 + 1
    assert full.item() == pytest.approx(12 / 9)
    assert float(local) == pytest.approx(5.0)


# --- clipped surrogate --------------------------------------------------------------------


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


def test_clip_higher_is_asymmetric() -> None:
    """DAPO: with eps_high 0.28 a ratio of 1.25 is not clipped; with a symmetric 0.2 it is."""
    logp = torch.log(torch.tensor([[1.25]]))
    adv = torch.tensor([2.0])
    loss_hi, c_hi = policy_gradient_loss(logp, torch.zeros(1, 1), adv, 0.2, 0.28)
    loss_sym, c_sym = policy_gradient_loss(logp, torch.zeros(1, 1), adv, 0.2, 0.2)
    assert loss_hi.item() == pytest.approx(-2.5) and not c_hi.item()
    assert loss_sym.item() == pytest.approx(-2.4) and c_sym.item()


def test_clipped_tokens_get_no_gradient_and_zero_advantage_no_loss() -> None:
    logp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = policy_gradient_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    # clipped token: 0; unclipped: d(-r)/d logp = -r = -1.1
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.1]]))
    zero, clipped = policy_gradient_loss(logp, torch.zeros(1, 2), torch.zeros(1), 0.2, 0.2)
    assert torch.equal(zero.detach().abs(), torch.zeros(1, 2)) and not clipped.any()


def test_surrogate_stays_finite_and_checks_shapes() -> None:
    loss, _ = policy_gradient_loss(torch.tensor([[0.0]]), torch.tensor([[-1000.0]]),
                                   torch.tensor([-1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)  # log-ratio clamped at 20
    with pytest.raises(ValueError, match="advantages"):
        policy_gradient_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), 0.2, 0.2)
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_gradient_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), 0.2, 0.2)


# --- KL -----------------------------------------------------------------------------------


def test_kl_k3_hand_values() -> None:
    a = torch.tensor([-1.0, -2.0, -0.5])
    assert torch.equal(kl_k3(a, a), torch.zeros(3))
    # ref - logp = ln 2 -> 2 - ln 2 - 1; ref - logp = -ln 2 -> 1/2 + ln 2 - 1
    out = kl_k3(torch.tensor([-1.0, -1.0]), torch.tensor([-1.0 + math.log(2), -1.0 - math.log(2)]))
    torch.testing.assert_close(out, torch.tensor([1 - math.log(2), math.log(2) - 0.5]))
    torch.manual_seed(3)
    assert bool((kl_k3(torch.randn(100), torch.randn(100)) >= 0).all())


def test_kl_k3_clamps_the_log_ratio() -> None:
    big = kl_k3(torch.tensor(-100.0), torch.tensor(0.0))  # d = 100 -> clamped to 20
    assert big.item() == pytest.approx(math.exp(20.0) - 21.0, rel=1e-6)
    small = kl_k3(torch.tensor(0.0), torch.tensor(-100.0))  # d = -100 -> -20
    assert small.item() == pytest.approx(math.exp(-20.0) + 19.0)


# --- log-probs and entropy ----------------------------------------------------------------


def test_logprobs_hand_values_and_temperature() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probs 1/4, 3/4
    lp = gather_token_logprobs(logits, torch.tensor([[1]]))
    assert lp.item() == pytest.approx(math.log(0.75))
    # T = 2: logits [0, ln3 / 2] -> p(1) = sqrt3 / (1 + sqrt3)
    lp2 = gather_token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    assert lp2.item() == pytest.approx(math.log(3**0.5 / (1 + 3**0.5)))
    with pytest.raises(ValueError, match="temperature"):
        gather_token_logprobs(logits, torch.tensor([[1]]), temperature=0.0)


def test_logprobs_match_log_softmax_in_value_and_gradient() -> None:
    torch.manual_seed(1)
    base = torch.randn(2, 3, 5)
    tokens = torch.randint(0, 5, (2, 3))
    for dtype in (torch.float32, torch.bfloat16):
        logits = base.to(dtype).requires_grad_()
        before = logits.detach().clone()
        lp = gather_token_logprobs(logits, tokens, temperature=0.5)
        assert lp.dtype == torch.float32
        assert torch.equal(logits.detach(), before)  # the caller's logits are not modified
        ref_in = logits.detach().float().requires_grad_()
        ref = torch.log_softmax(ref_in / 0.5, -1).gather(-1, tokens[..., None])[..., 0]
        torch.testing.assert_close(lp, ref)
        (g,) = torch.autograd.grad(lp.sum(), logits)
        (g_ref,) = torch.autograd.grad(ref.sum(), ref_in)
        torch.testing.assert_close(g.float(), g_ref, atol=1e-2, rtol=1e-2)


def test_entropy_hand_values() -> None:
    uniform = token_entropy(torch.zeros(1, 1, 4))
    assert uniform.item() == pytest.approx(math.log(4.0))
    two = token_entropy(torch.tensor([[[0.0, math.log(3.0)]]]))  # p = 1/4, 3/4
    assert two.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # temperature 2 on [0, ln 9] is [0, ln 3]: the same distribution
    hot = token_entropy(torch.tensor([[[0.0, math.log(9.0)]]]), temperature=2.0)
    assert hot.item() == pytest.approx(two.item())
    peaked = token_entropy(torch.tensor([[[0.0, 1000.0]]]))
    assert torch.isfinite(peaked).all() and peaked.item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_matches_reference_with_and_without_grad() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 7)
    logp = torch.log_softmax(logits / 0.7, -1)
    ref = -(logp.exp() * logp).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(token_entropy(logits, 0.7), ref)
    x = logits.clone().requires_grad_()
    h = token_entropy(x, 0.7)
    torch.testing.assert_close(h, ref)
    (g,) = torch.autograd.grad(h.sum(), x)
    x_ref = logits.clone().requires_grad_()
    lp = torch.log_softmax(x_ref / 0.7, -1)
    (g_ref,) = torch.autograd.grad((-(lp.exp() * lp).sum(-1)).sum(), x_ref)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_with_entropy_equal_the_two_separate_functions(temperature: float) -> None:
    """One logsumexp for both: the same values, gradients only through the log-probs, and
    float32 logits are left as they were."""
    g = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(2, 5, 11, generator=g)).requires_grad_()
    before = logits.detach().clone()
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    lp, ent = token_logprobs_with_entropy(logits, tokens, temperature)
    torch.testing.assert_close(lp, gather_token_logprobs(logits, tokens, temperature))
    torch.testing.assert_close(ent, token_entropy(logits.detach(), temperature))
    assert lp.requires_grad and not ent.requires_grad
    lp.sum().backward()
    want = torch.autograd.grad(gather_token_logprobs(logits, tokens, temperature).sum(),
                               logits)[0]
    torch.testing.assert_close(logits.grad, want)
    assert torch.equal(logits.detach(), before)


def reference_logprobs(logits: torch.Tensor, tokens: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at the tokens, plain autograd over the first T positions."""
    x = logits[:, : tokens.shape[1]].float() / temperature
    return torch.log_softmax(x, -1).gather(-1, tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("budget", [10**9, 33, 7], ids=["one-block", "rows", "positions"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_log_probs_equal_the_plain_formulas(budget: int, temperature: float) -> None:
    """Blocks of whole rows (budget 33: 3 rows of 1 x 11), of a row's positions (budget 7:
    smaller than one position's 11 logits, so one position per block) or none: the same
    log-probs, entropies and gradients; the LM head's extra last position gets gradient 0."""
    g = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(4, 6, 11, generator=g)).requires_grad_()  # T' = T + 1
    tokens = torch.randint(0, 11, (4, 5), generator=g)
    weights = torch.randn(4, 5, generator=g)
    lp, ent = chunked_logprobs(logits, tokens, temperature, budget=budget)
    want = reference_logprobs(logits, tokens, temperature)
    torch.testing.assert_close(lp, want)
    torch.testing.assert_close(ent, token_entropy(logits[:, :5].detach(), temperature))
    assert not ent.requires_grad
    (got_grad,) = torch.autograd.grad((lp * weights).sum(), logits)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), logits)
    torch.testing.assert_close(got_grad, want_grad)
    assert torch.equal(got_grad[:, 5], torch.zeros(4, 11))
    alone, none = chunked_logprobs(logits, tokens, temperature, budget=budget, with_entropy=False)
    assert none is None and torch.equal(alone, lp)  # the old and reference log-probs' path


def test_bf16_logits_get_fp32_log_probs_and_bf16_gradients() -> None:
    """bf16 logits: log-probs computed in float32 (bf16 ones are visibly wrong), the
    gradient handed back in the logits' dtype, as autograd would."""
    g = torch.Generator().manual_seed(6)
    logits = (3 * torch.randn(2, 4, 50, generator=g)).bfloat16().requires_grad_()
    tokens = torch.randint(0, 50, (2, 3), generator=g)
    lp, _ = chunked_logprobs(logits, tokens, 0.8, budget=60)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, reference_logprobs(logits.detach(), tokens, 0.8))
    lp.sum().backward()
    (want,) = torch.autograd.grad(reference_logprobs(logits, tokens, 0.8).sum(), logits)
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad, want)


def test_one_block_is_bit_identical_to_autograd() -> None:
    """What fits one block (every toy micro-batch) trains exactly as autograd over
    token_logprobs_with_entropy did: the same bits, forward and backward."""
    g = torch.Generator().manual_seed(7)
    logits = (4 * torch.randn(3, 8, 261, generator=g)).requires_grad_()
    tokens = torch.randint(0, 261, (3, 8), generator=g)
    weights = torch.randn(3, 8, generator=g)
    lp, ent = chunked_logprobs(logits, tokens)
    (got,) = torch.autograd.grad((lp * weights).sum(), logits)
    ref_lp, ref_ent = token_logprobs_with_entropy(logits, tokens)
    (want,) = torch.autograd.grad((ref_lp * weights).sum(), logits)
    assert torch.equal(lp, ref_lp) and torch.equal(ent, ref_ent) and torch.equal(got, want)


def test_chunk_plan_covers_every_logit_once_within_the_budget() -> None:
    for rows, positions, vocab, budget in [(5, 7, 3, 40), (5, 7, 3, 5), (2, 3, 4, 10**6)]:
        seen = torch.zeros(rows, positions, dtype=torch.int64)
        for r, c in chunk_plan(rows, positions, vocab, budget):
            seen[r, c] += 1
            block = (r.stop - r.start) * (c.stop - c.start) * vocab
            assert block <= max(budget, vocab)  # one position is the smallest block
        assert torch.equal(seen, torch.ones_like(seen))
