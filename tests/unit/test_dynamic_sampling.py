"""DAPO's dynamic sampling: which groups carry signal, how a batch is filled, the rounds
loop on one rank, and its metrics, on hand-made batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grpo_cli.algo.dynamic import fill_groups, informative_groups
from grpo_cli.config.schema import AlgorithmConfig
from grpo_cli.errors import RewardContractError
from grpo_cli.rollout.base import Completion
from grpo_cli.telemetry.length_metrics import dynamic_sampling_metrics
from grpo_cli.train.dynamic import concat_scored, draw_informative
from grpo_cli.train.engine import Dist
from grpo_cli.train.sample import Rollouts, Scored

ONE_RANK = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def test_constant_groups_carry_no_signal() -> None:
    rewards = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0.5, 0.5, 0.5, 0.5000001, np.nan, 1, 0, 1])
    assert informative_groups(rewards, 4).tolist() == [True, True, True, False]


def test_a_band_keeps_groups_whose_mean_is_strictly_inside() -> None:
    acc = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1])  # means .25 .75 1 .5
    assert informative_groups(acc, 4, 0.25, 0.9).tolist() == [False, True, False, True]
    assert informative_groups(acc, 4, None, 0.6).tolist() == [True, False, False, True]
    assert informative_groups(acc, 4, 0.6, None).tolist() == [False, True, True, False]


def test_values_must_be_whole_groups() -> None:
    with pytest.raises(ValueError, match="whole groups of 4"):
        informative_groups(np.zeros(6), 4)


def test_a_batch_takes_the_first_informative_groups_in_order() -> None:
    chosen, carries = fill_groups(np.array([False, True, True, False, True, True]), 3)
    assert chosen.tolist() == [1, 2, 4] and carries.all()


def test_a_short_batch_is_filled_with_the_earliest_dropped_groups() -> None:
    chosen, carries = fill_groups(np.array([False, True, False, False]), 3)
    assert chosen.tolist() == [0, 1, 2] and carries.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="2 groups sampled, 3 wanted"):
        fill_groups(np.array([True, True]), 3)


def rounds_of(rewards_per_round: list[list[float]], n: int) -> list[tuple[Rollouts, Scored]]:
    """Rounds of made-up rollouts: prompt ids count up, every completion 5 tokens except
    those of a group of zeros (truncated at 8)."""
    out, pid = [], 0
    for rewards in rewards_per_round:
        r = np.array(rewards, dtype=np.float64)
        cut = np.repeat((r.reshape(-1, n) == 0).all(axis=1), n)
        comps = [Completion(i // n, i % n, [1] * (8 if c else 5), [0.0] * (8 if c else 5),
                            "length" if c else "stop") for i, c in enumerate(cut)]
        ids = [pid + i // n for i in range(len(r))]
        pid += len(r) // n
        rollouts = Rollouts(ids, comps, ["x"] * len(r), np.array([len(c.token_ids) for c in comps]),
                            cut, None)
        out.append((rollouts, Scored(r, r.copy(), {"accuracy": r.copy()})))
    return out


def drawer(parts: list[tuple[Rollouts, Scored]], drawn: list[int]):
    def draw(k: int) -> tuple[Rollouts, Scored]:
        drawn.append(k)
        return parts[k]
    return draw


def test_rounds_stop_once_the_batch_is_full() -> None:
    # round 0: groups 0 (0, 1) kept, 1 (1, 1) and 2 (0, 0) dropped: one of three
    # round 1: groups 3 (1, 0) and 5 (1, 0) kept, 4 (0, 0) dropped: three, so no round 2
    parts = rounds_of([[0, 1, 1, 1, 0, 0], [1, 0, 0, 0, 1, 0], [0, 1, 0, 1, 0, 1]], n=2)
    drawn: list[int] = []
    r, s, rows = draw_informative(drawer(parts, drawn), 3, 2,
                                  AlgorithmConfig(dynamic_sampling=True), ONE_RANK)
    assert drawn == [0, 1]
    assert r.prompt_ids == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert s.rewards.tolist() == [0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    assert rows.rows.tolist() == [0, 1, 6, 7, 10, 11] and rows.loss.all()
    assert s.columns["informative"].astype(int).tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]
    assert s.columns["trained"].astype(int).tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]
    assert s.columns["round"].tolist() == [0] * 6 + [1] * 6


def test_when_the_rounds_run_out_the_batch_is_filled_without_loss() -> None:
    parts = rounds_of([[0, 0, 1, 0, 1, 1], [0, 0, 0, 0, 1, 1]], n=2)
    drawn: list[int] = []
    a = AlgorithmConfig(dynamic_sampling=True, dynamic_sampling_max_rounds=2)
    r, s, rows = draw_informative(drawer(parts, drawn), 3, 2, a, ONE_RANK)
    assert drawn == [0, 1]  # one informative group in two rounds
    # group 1 is the only one with signal; groups 0 and 2 fill the batch, carrying no loss
    assert rows.rows.tolist() == [0, 1, 2, 3, 4, 5]
    assert rows.loss.tolist() == [False, False, True, True, False, False]
    assert s.columns["trained"].astype(int).tolist() == [0, 0, 1, 1] + [0] * 8
    m = dynamic_sampling_metrics({"response_length": r.lengths, "truncated": r.truncated,
                                  **s.columns}, 2, 3)
    # sampled 6 groups, 5 dropped, of which groups 0, 3 and 4 were all cut (all zeros)
    assert m == {"dynamic/rounds": 2.0, "dynamic/groups_sampled": 6.0,
                 "dynamic/groups_kept": 1.0, "dynamic/groups_short": 2.0,
                 "dynamic/dropped_frac": 5 / 6, "dynamic/dropped_truncated_frac": 3 / 5,
                 "dynamic/trained_length_mean": 5.0, "dynamic/trained_clip_ratio": 0.0}


def test_the_filter_reads_a_named_component_and_names_the_choices_when_missing() -> None:
    parts = rounds_of([[0, 1, 1, 1]], n=2)
    parts[0][1].components["accuracy"] = np.array([1.0, 1.0, 0.0, 1.0])  # the other group
    a = AlgorithmConfig(dynamic_sampling=True, dynamic_sampling_key="accuracy",
                        dynamic_sampling_max_rounds=1)
    _, _, rows = draw_informative(drawer(parts, []), 1, 2, a, ONE_RANK)
    assert rows.rows.tolist() == [2, 3]
    a.dynamic_sampling_key = "correctness"
    with pytest.raises(RewardContractError, match="dynamic_sampling_key=correctness.*accuracy"):
        draw_informative(drawer(parts, []), 1, 2, a, ONE_RANK)


def test_rounds_missing_a_component_get_nan_there() -> None:
    one = Scored(np.array([1.0, 0.0]), np.array([1.0, 0.0]), {"format": np.array([1.0, 1.0])},
                 {"budget": np.array([5, 6])})
    two = Scored(np.array([0.0, 0.0]), np.array([0.0, 0.0]), {}, {})
    s = concat_scored([one, two])
    assert s.rewards.tolist() == [1, 0, 0, 0]
    np.testing.assert_array_equal(s.components["format"], [1, 1, np.nan, np.nan])
    np.testing.assert_array_equal(s.columns["budget"], [5, 6, np.nan, np.nan])
