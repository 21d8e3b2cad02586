"""Where along a response a per-token quantity sits: a row's mean over its generated tokens,
its first and its last ceil(L/4) tokens (grpo_cli/train/update.py, the entropy columns)."""

from __future__ import annotations

import math

import torch

from grpo_cli.train.update import position_means


def test_quarters_by_hand_and_padding_left_out() -> None:
    values = torch.tensor([[1.0, 2, 3, 4, 5, 99, 99],  # L=5: quarters of ceil(5/4)=2 tokens
                           [7.0, 99, 99, 99, 99, 99, 99],  # L=1: every part is the one token
                           [1.0, 2, 3, 4, 5, 6, 7],  # L=7: quarters of 2
                           [99.0] * 7])  # nothing generated
    lengths = torch.tensor([5, 1, 7, 0])
    generated = (torch.arange(7)[None, :] < lengths[:, None]).float()
    whole, first, last = position_means(values, generated)
    assert whole[:3].tolist() == [3.0, 7.0, 4.0]
    assert first[:3].tolist() == [1.5, 7.0, 1.5]
    assert last[:3].tolist() == [4.5, 7.0, 6.5]
    assert all(math.isnan(float(t[3])) for t in (whole, first, last))
