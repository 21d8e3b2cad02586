"""The real-model cap study's claim, kept from rotting: SmolLM2-135M-Instruct warmed up on
worked solutions, GRPO on three-term sums, a cap that cuts off the step-by-step answers (20)
against a generous one (96), and overlong filtering at 20, through the real `grpo sweep` of
the shipped sweep files.

Seed 0 only, shortened to 21 steps (probes at steps 0, 10 and 20): up to step 20 each arm is
the full sweep's seed-0 arm step for step; 16 min 26 s on 2 cores with the warm start cached
(it is built on first use: ~11 minutes more). Marked `slow` and `study`; not in `make test`:
`make test-study` runs it. The margins are those that held for seeds 0, 1 and 2 of the
full 40-step sweep, and since for seeds 3 and 4 (docs/reproductions.md has the report's
numbers).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import Arm, run_sweep

pytestmark = [pytest.mark.study, pytest.mark.slow]

SHORT = ["seed=0", "trainer.steps=21", "trainer.val_every=10"]
# Step-20 probe / step-0 probe of the natural length in the full sweep
# (sweep-20261206-124528-3e458b6e): cap 20 0.71, 0.33, 0.86; cap 96 1.18, 1.03, 1.07.
SMALL_NATURAL_MAX, LARGE_NATURAL_MIN = 0.9, 1.0


def probes(arm: Arm, key: str) -> list[float]:
    """The validation probe's ``key`` at each probed step, in step order."""
    return [m[key] for m in arm.metrics if key in m]


def window(arm: Arm, key: str, steps: slice) -> float:
    return float(np.mean([m[key] for m in arm.metrics[steps]]))


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Arm]:
    out = run_sweep(tmp_path_factory.mktemp("runs"), "smollm2_long_sums_max_len.yaml", *SHORT,
                    timeout=3600)
    caps = {a.config["data"]["max_response_length"]: a for a in out}
    assert sorted(caps) == [20, 96] and all(len(a.metrics) == 21 for a in out)
    return caps


def test_the_small_cap_teaches_short_answers_and_the_generous_cap_does_not(
        arms: dict[int, Arm]) -> None:
    small, large = arms[20], arms[96]
    first, last = slice(0, 5), slice(-5, None)
    # At 20 most first answers are cut off, and ever fewer: the policy learns to write short
    # answers (steps 0-4 -> 16-20: 0.63 -> 0.18, 0.68 -> 0.08, 0.67 -> 0.08); at 96 none.
    assert window(small, "length/clip_ratio", first) >= 0.5
    assert window(small, "length/clip_ratio", last) < window(small, "length/clip_ratio", first) / 2
    assert max(m["length/clip_ratio"] for m in large.metrics) == 0
    # the natural length (held-out prompts at cap 128) falls at 20 and holds at 96
    small_natural = probes(small, "val/length/mean")
    large_natural = probes(large, "val/length/mean")
    assert small_natural[-1] < small_natural[0] * SMALL_NATURAL_MAX
    assert large_natural[-1] > large_natural[0] * LARGE_NATURAL_MIN
    # and the answers the small cap taught are mostly wrong (probe accuracy at step 20:
    # 0.06, 0.00, 0.06 at cap 20; 0.81, 0.69, 0.81 at cap 96)
    assert probes(large, "val/accuracy")[-1] - probes(small, "val/accuracy")[-1] >= 0.5


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Arm:
    (arm,) = run_sweep(tmp_path_factory.mktemp("filtered"),
                       "smollm2_long_sums_overlong_filter.yaml", *SHORT, timeout=1800)
    assert arm.config["algorithm"]["mask_truncated_in_adv"] and len(arm.metrics) == 21
    return arm


def test_overlong_filtering_keeps_the_natural_length_at_the_small_cap(
        arms: dict[int, Arm], filtered: Arm) -> None:
    """The remedy's sweep file at seed 0: with truncated answers out of the loss and of their
    group's baseline, nothing teaches the policy to stop reasoning in steps."""
    plain = arms[20]
    last = slice(-5, None)
    # it keeps writing answers the cap cuts off (steps 16-20: 0.56, 0.69, 0.53 filtered;
    # 0.17, 0.07, 0.08 plain) ...
    assert window(filtered, "length/clip_ratio", last) >= 0.4
    assert window(filtered, "length/clip_ratio", last) > 2 * window(plain, "length/clip_ratio",
                                                                     last)
    # ... and its natural length holds (step 20 / step 0: 0.99, 1.00, 1.01 filtered; 0.71,
    # 0.33, 0.86 plain)
    natural = probes(filtered, "val/length/mean")
    assert natural[-1] >= 0.95 * natural[0]
    assert natural[-1] / natural[0] > probes(plain, "val/length/mean")[-1] / probes(
        plain, "val/length/mean")[0]
