"""Reward loading and the batch reward contract (EasyR1 convention)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grpo_cli.errors import ConfigError, RewardError
from grpo_cli.rewards.loader import load_reward_fn, score_batch
from grpo_cli.rewards.math import compute_score, extract_answer, final_answer_score


def inputs(*responses: str, truth: str = "17") -> list[dict]:
    return [{"response": r, "response_length": len(r), "ground_truth": truth, "prompt": "p",
             "truncated": False} for r in responses]


def test_math_reward_grades_with_math_verify() -> None:
    res = compute_score(inputs("3+5=8 <answer>17</answer>", "<answer>17.0</answer>",
                               "<answer>18</answer>", "no answer", "so \\boxed{17}"))
    assert [r["accuracy"] for r in res] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert [r["format"] for r in res] == [1.0, 1.0, 1.0, 0.0, 1.0]
    weighted = compute_score(inputs("<answer>18</answer>"), format_weight=0.1)
    assert weighted[0]["overall"] == pytest.approx(0.1)
    fraction = compute_score(inputs("<answer>\\frac{1}{2}</answer>", truth="0.5"))
    assert fraction[0]["accuracy"] == 1.0


def test_final_answer_is_where_a_prose_reply_ends() -> None:
    res = final_answer_score(inputs("3 + 14 equals 17.", "It is 17, or 18 if you count 1",
                                    "The sum is $\\boxed{17}$, not 5", "seventeen", "",
                                    "3 + 14 equals two.", "Adding 1,000 and 7 gives 17.0"))
    # restating the problem ("3 + 14") is not an answer, though it evaluates to 17
    assert [r["accuracy"] for r in res] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert all(r["overall"] == r["accuracy"] for r in res)
    cut = inputs("3 + 14 = 17. This simple rule, often called")
    assert final_answer_score(cut)[0]["accuracy"] == 1.0
    cut[0]["truncated"] = True  # stopped by the cap: it has no final answer
    assert final_answer_score(cut)[0]["accuracy"] == 0.0


def test_extract_answer_prefers_last_tag_and_handles_nested_boxes() -> None:
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert extract_answer("\\boxed{unclosed") is None


def test_file_reward_with_components(tmp_path: Path) -> None:
    f = tmp_path / "my_reward.py"
    f.write_text("def fn(batch):\n    return [{'overall': len(x['response']) / 10, "
                 "'correct': 1.0, 'style': 0.5} for x in batch]\n")
    scores = score_batch(load_reward_fn(f"{f}:fn"), inputs("abc", "abcdefghij"))
    np.testing.assert_allclose(scores.overall, [0.3, 1.0])
    np.testing.assert_allclose(scores.correct, [1.0, 1.0])
    assert set(scores.components) == {"correct", "style"}


def test_float_rewards_have_unknown_correctness() -> None:
    scores = score_batch(lambda batch: [1.0 for _ in batch], inputs("a", "b"))
    assert np.isnan(scores.correct).all() and scores.components == {}


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [("nomodule_xyz:fn", "cannot import"), ("grpo_cli.rewards.math:nope", "has no function"),
     ("/nope/reward.py:fn", "not found"), ("justaname", "use module:fn")],
)
def test_bad_reward_specs(spec: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_reward_fn(spec)


@pytest.mark.parametrize(
    ("fn", "pattern"),
    [
        (lambda b: [{"score": 1.0} for _ in b], "sample 0: reward dict has no 'overall'"),
        (lambda b: [1.0], "must return a list of 2"),
        (lambda b: ["high", 1.0], "sample 0: reward 'overall' is str"),
        (lambda b: [1.0, float("nan")], "sample 1: reward 'overall' is nan"),
        (lambda b: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_bad_reward_results_name_the_sample(fn, pattern: str) -> None:
    with pytest.raises(RewardError, match=pattern):
        score_batch(fn, inputs("a", "b"))
