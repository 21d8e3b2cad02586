"""Sampler-trainer mismatch correction: each mode's weights and loss on hand-computed
tokens, and the mismatch metrics on a hand-made batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grpo_cli.algo.correction import correction_weights, mismatch_log_ratio
from grpo_cli.algo.losses import policy_gradient_loss, token_loss_weights
from grpo_cli.telemetry.length_metrics import mismatch_metrics

# Two rows: log-ratios (trainer - sampler) of 3 generated tokens, then 2 and padding.
TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, 0.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -0.2, -9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
LR = [[0.5, -1.0, 0.0], [-0.1, 0.1, 0.0]]


def test_log_ratio_is_trainer_minus_sampler_on_generated_tokens_only() -> None:
    lr = mismatch_log_ratio(TRAINER, SAMPLER, MASK)
    torch.testing.assert_close(lr, torch.tensor(LR))
    far = mismatch_log_ratio(torch.tensor([[0.0]]), torch.tensor([[-50.0]]), torch.ones(1, 1))
    assert float(far) == 20.0  # clamped


def test_tis_truncates_the_ratio_at_the_cap() -> None:
    w = correction_weights(torch.tensor(LR), MASK, "tis", cap=1.5)
    want = [[min(math.exp(0.5), 1.5), math.exp(-1.0), 1.0], [math.exp(-0.1), math.exp(0.1), 0]]
    torch.testing.assert_close(w, torch.tensor(want))
    assert float(w[0, 0]) == 1.5


def test_icepop_keeps_the_ratio_inside_the_band_and_zeroes_the_rest() -> None:
    w = correction_weights(torch.tensor(LR), MASK, "icepop", low=0.5, high=1.5)
    # e^0.5 = 1.65 and e^-1 = 0.37 leave [0.5, 1.5]
    want = [[0.0, 0.0, 1.0], [math.exp(-0.1), math.exp(0.1), 0.0]]
    torch.testing.assert_close(w, torch.tensor(want))


def test_seq_mask_drops_whole_sequences_by_their_geometric_mean_ratio() -> None:
    # row 0: mean log-ratio (0.5 - 1 + 0) / 3 = -1/6, ratio 0.846; row 1: 0 -> ratio 1
    w = correction_weights(torch.tensor(LR), MASK, "seq_mask", low=0.9, high=1.1)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    w = correction_weights(torch.tensor(LR), MASK, "seq_mask", low=0.8, high=1.1)
    torch.testing.assert_close(w, MASK)


def test_none_and_bad_modes() -> None:
    torch.testing.assert_close(correction_weights(torch.tensor(LR), MASK, "none"), MASK)
    with pytest.raises(ValueError, match="allowed none, tis, icepop, seq_mask"):
        correction_weights(torch.tensor(LR), MASK, "is")
    with pytest.raises(ValueError, match="needs both bounds"):
        correction_weights(torch.tensor(LR), MASK, "icepop")


E = math.exp


@pytest.mark.parametrize(("mode", "kwargs", "w"), [
    # e^0.5 = 1.65 > cap 1.5; the others below it
    ("tis", {"cap": 1.5}, [[1.5, E(-1.0), 1.0], [E(-0.1), E(0.1), 0.0]]),
    # e^0.5 = 1.65 and e^-1 = 0.37 leave [0.5, 1.5]
    ("icepop", {"low": 0.5, "high": 1.5}, [[0.0, 0.0, 1.0], [E(-0.1), E(0.1), 0.0]]),
    # row 0's geometric-mean ratio e^(-1/6) = 0.85 leaves [0.9, 1.1], row 1's 1.0 stays
    ("seq_mask", {"low": 0.9, "high": 1.1}, [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]),
    ("none", {}, [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
])
def test_the_weighted_loss_keeps_the_global_normalisers(mode: str, kwargs: dict,
                                                        w: list[list[float]]) -> None:
    """token-mean over the 5 generated tokens, advantages (+1, -2), one update (ratio 1):
    loss = -(1/5) sum_t w_t A_i, tokens a weight zeroes still in the denominator; and
    d loss / d logp_t = -w_t A_i / 5."""
    weights = correction_weights(torch.tensor(LR), MASK, mode, **kwargs)
    torch.testing.assert_close(weights, torch.tensor(w))
    logp = TRAINER.clone().requires_grad_(True)
    adv = [1.0, -2.0]
    token_loss, _ = policy_gradient_loss(logp, logp.detach(), torch.tensor(adv), 0.2, 0.28)
    loss = (token_loss_weights(MASK, "token-mean") * token_loss * weights).sum()
    want = -sum(a * sum(row) for a, row in zip(adv, w, strict=True)) / 5
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    loss.backward()
    grad = [[-wt * a / 5 for wt in row] for a, row in zip(adv, w, strict=True)]
    torch.testing.assert_close(logp.grad, torch.tensor(grad))


def test_mismatch_metrics_hand_computed() -> None:
    cols = {"response_length": np.array([4, 2, 10, 6, 3]),
            "truncated": np.array([False, False, True, True, False]),
            "logratio_sum": np.array([0.1, -0.2, 0.9, 0.5, np.nan]),  # the last: not trained
            "is_weight_sum": np.array([4.0, 0.0, 7.0, 6.0, np.nan]),
            "is_masked_tokens": np.array([0.0, 2.0, 3.0, 0.0, np.nan])}
    m = mismatch_metrics(cols)
    assert m == pytest.approx({
        "mismatch/logratio_length_spearman": 1.0,  # ranks agree exactly
        "mismatch/weight_mean": 17 / 22, "mismatch/token_masked_frac": 5 / 22,
        "mismatch/seq_masked_frac": 1 / 4, "mismatch/masked_frac_truncated": 3 / 16,
        "mismatch/masked_frac_finished": 2 / 6})
    only = mismatch_metrics({k: cols[k] for k in ("response_length", "truncated",
                                                  "logratio_sum")})
    assert only == {"mismatch/logratio_length_spearman": 1.0}
    cols["logratio_sum"] = np.array([0.3, 0.3, 0.3, 0.3, np.nan])  # constant: no correlation
    assert "mismatch/logratio_length_spearman" not in mismatch_metrics(cols)
