"""The group-relative length controls wired through the real `grpo run` (tiny toy runs):
each stored reward equals the paper's formula recomputed here, independently, from the
stored lengths / correctness / budgets; GFPO trains on the k shortest only; L1 budgets are
in the prompt text; the adaptive cap follows the clip ratios, also across a resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grpo_cli.telemetry.store import read_metrics, read_rollouts
from tests.helpers import TINY, run_id_of

# One step is enough for a reward formula; the validation probe is not needed here.
BASE = [*TINY, "trainer.val_every=0", "logger.wandb.mode=disabled"]


def run(grpo, runs_dir: Path, *args: str) -> tuple[Path, pd.DataFrame, list[dict]]:
    run_dir = runs_dir / run_id_of(grpo("run", *BASE, *args))
    return run_dir, read_rollouts(run_dir), read_metrics(run_dir)


def groups(df: pd.DataFrame):
    """Each prompt's group of one step, in stored order."""
    return (g for _, g in df.groupby(["step", "prompt_id"], sort=False))


def arrays(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (g["response_length"].to_numpy(np.float64), g["correct"].to_numpy() >= 0.5,
            g["reward"].to_numpy(np.float64))


def test_shorter_better_reward_is_the_papers(grpo, runs_dir: Path) -> None:
    _, df, _ = run(grpo, runs_dir, "trainer.steps=2", "length=shorter_better",
                   "length.shorter_better.alpha=2", "length.shorter_better.beta=0.05")
    assert df["correct"].notna().all()
    for g in groups(df):
        n, c, r = arrays(g)
        sol = n[c].min() if c.any() else n.mean()
        np.testing.assert_allclose(r, 2.0 * c - 0.05 * np.abs(n - sol), atol=1e-5)
    np.testing.assert_allclose(df["length_penalty"], df["reward"] - df["correct"], atol=1e-5)


def test_arora_zanette_reward_is_the_papers(grpo, runs_dir: Path) -> None:
    _, df, _ = run(grpo, runs_dir, "trainer.steps=2", "length=arora_zanette",
                   "length.arora_zanette.alpha=0.4")
    for g in groups(df):
        n, c, r = arrays(g)
        z = np.zeros_like(n)
        if c.sum() >= 2 and n[c].std() > 0:
            z = (n - n[c].mean()) / n[c].std()
        np.testing.assert_allclose(r, c * (1 - 0.4 / (1 + np.exp(-z))), atol=1e-5)
        # trained as the paper: RLOO, each reward minus the mean of the group's others
        adv = g["advantage"].to_numpy(np.float64)
        others = (r.sum() - r) / (len(r) - 1)
        want = np.zeros_like(r) if r.max() == r.min() else r - others
        np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["l1_exact", "l1_max"])
def test_l1_budget_is_in_the_prompt_the_column_and_the_reward(grpo, runs_dir: Path,
                                                              variant: str) -> None:
    run_dir, df, metrics = run(grpo, runs_dir, "trainer.steps=2", f"length={variant}",
                               "data.length_budget=[6,20]", "logger.sample_every=1")
    budget = df["budget"].to_numpy(np.float64)
    assert ((budget >= 6) & (budget <= 20)).all()
    for g in groups(df):
        assert g["budget"].nunique() == 1  # one budget per prompt
        n, c, r = arrays(g)
        b = g["budget"].to_numpy(np.float64)
        want = (c - 0.02 * np.abs(b - n) if variant == "l1_exact"
                else c * np.clip(0.05 * (b - n) + 0.5, 0, 1))
        np.testing.assert_allclose(r, want, atol=1e-5)
    # samples.jsonl holds each step's first rows: their prompt text states their budget
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples
    for step in {s["step"] for s in samples}:
        rows = df[df["step"] == step].reset_index(drop=True)
        for i, s in enumerate(x for x in samples if x["step"] == step):
            words = "maximum " if variant == "l1_max" else ""  # the paper's Max wording
            budget_i = int(rows["budget"][i])
            assert s["prompt"].startswith(f"Think for {words}{budget_i} tokens.\n")
    for m in metrics:  # requested vs produced, logged every step
        rows = df[df["step"] == m["step"]]
        assert m["budget/requested_mean"] == pytest.approx(rows["budget"].mean())
        assert m["budget/abs_error_mean"] == pytest.approx(
            (rows["budget"] - rows["response_length"]).abs().mean())


def test_gfpo_trains_on_the_k_shortest_and_logs_all_g(grpo, runs_dir: Path) -> None:
    _, df, metrics = run(grpo, runs_dir, "trainer.steps=2", "length=gfpo", "rollout.n=8",
                         "algorithm.gfpo_keep=3")
    assert len(df) == 2 * 2 * 8  # steps x prompts x G: every sample is recorded
    for g in groups(df):
        n, _, r = arrays(g)
        kept = g["gfpo_kept"].to_numpy() > 0.5
        assert kept.sum() == 3
        # the kept three are the three shortest (ties: the lower sample index)
        shortest = sorted(range(8), key=lambda i: (n[i], g["sample"].iloc[i]))[:3]
        assert sorted(np.flatnonzero(kept)) == sorted(shortest)
        adv = g["advantage"].to_numpy(np.float64)
        assert (adv[~kept] == 0).all()
        k = r[kept]
        want = np.zeros(3) if k.max() == k.min() else (k - k.mean()) / (k.std(ddof=1) + 1e-6)
        np.testing.assert_allclose(adv[kept], want, rtol=1e-4, atol=1e-5)
    for m in metrics:
        rows = df[df["step"] == m["step"]]
        assert m["length/mean"] == pytest.approx(rows["response_length"].mean())  # all G
        assert m["gfpo/kept_length_mean"] == pytest.approx(
            rows.loc[rows["gfpo_kept"] > 0.5, "response_length"].mean())


def test_stop_penalty_sets_truncated_rewards(grpo, runs_dir: Path) -> None:
    _, df, _ = run(grpo, runs_dir, "trainer.steps=1", "max_len=16", "length=stop_penalty",
                   "length.stop_penalty_value=-0.75")
    cut = df["truncated"].to_numpy()
    assert cut.any() and (~cut).any(), "cap 16 truncates some toy answers, not all"
    np.testing.assert_allclose(df["reward"][cut], -0.75)
    np.testing.assert_allclose(df["reward"][~cut], df["accuracy"][~cut])


def expected_caps(clips: list[float], start: int, rounds: list[int], threshold: float,
                  min_steps: int) -> list[int]:
    """Independent replay of the adaptive rule: the cap of each step from the clip ratios."""
    caps, ladder, steps_in = [], [start, *rounds], 0
    for clip in clips:
        caps.append(ladder[0])
        steps_in += 1
        if len(ladder) > 1 and steps_in >= min_steps and clip < threshold:
            ladder, steps_in = ladder[1:], 0
    return caps


ADAPTIVE = ["length=thinkprune", "max_len=32", "length.rounds=[24,16]",
            "length.round_clip_threshold=0.6", "length.round_min_steps=2"]


def test_adaptive_caps_follow_the_clip_ratio_and_resume_exactly(grpo, runs_dir: Path) -> None:
    full, _, metrics = run(grpo, runs_dir, "trainer.steps=6", *ADAPTIVE)
    clips = [m["length/clip_ratio"] for m in metrics]
    caps = [m["max_len"] for m in metrics]
    assert caps == expected_caps(clips, 32, [24, 16], 0.6, 2)
    assert len(set(caps)) >= 2, f"no round change in 6 steps ({clips}); retune the test"
    # Stop after step 3 with the last checkpoint at step 2, resume to 6 steps: the caps of
    # steps 3-5 are decided again from the stored clip ratios of steps 0-2.
    part = run_id_of(grpo("run", *BASE, "trainer.steps=4", "trainer.save_every=3", *ADAPTIVE))
    assert run_id_of(grpo("run", f"resume={part}", "trainer.steps=6")) == part
    resumed = read_metrics(runs_dir / part)
    assert [m["max_len"] for m in resumed] == caps
    assert [m["length/clip_ratio"] for m in resumed] == pytest.approx(clips)
