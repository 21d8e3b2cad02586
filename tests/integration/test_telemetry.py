"""Every logged length metric of a real short run is recomputed from the rollout Parquet rows
with numpy/scipy, and the offline W&B run holds the same step-indexed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from grpo_cli.telemetry.store import read_metrics, read_rollouts
from grpo_cli.telemetry.wandb_files import find_run_file, read_wandb_history
from tests.helpers import TINY, run_grpo, run_id_of

STEPS, PROMPTS, N, CAP = 3, 4, 4, 24


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    res = run_grpo(runs, "run", *TINY, f"trainer.steps={STEPS}",
                   f"trainer.prompts_per_step={PROMPTS}", f"rollout.n={N}", f"max_len={CAP}",
                   "+reward.kwargs.format_weight=0.5")
    return runs / run_id_of(res)


def expected_metrics(rows) -> dict[str, float]:
    """An independent recomputation of DESIGN.md's per-step metrics."""
    length = rows["response_length"].to_numpy(float)
    reward = rows["reward"].to_numpy(float)
    trunc = rows["truncated"].to_numpy(bool)
    correct = rows["correct"].to_numpy(float)
    out = {
        "length/mean": length.mean(), "length/std": length.std(), "length/min": length.min(),
        "length/max": length.max(), "length/clip_ratio": trunc.mean(),
        "reward/mean": reward.mean(), "reward/std": reward.std(),
    }
    for q in (10, 50, 90, 99):
        out[f"length/p{q}"] = np.percentile(length, q)
    if (~trunc).any():
        out["length/terminated_mean"] = length[~trunc].mean()
    if trunc.any():
        out["reward/truncated_mean"] = reward[trunc].mean()
    if (correct >= 0.5).any():
        out["length/correct_mean"] = length[correct >= 0.5].mean()
    if (correct < 0.5).any():
        out["length/incorrect_mean"] = length[correct < 0.5].mean()
    if np.ptp(reward) > 0 and np.ptp(length) > 0:
        out["corr/reward_length_pearson"] = stats.pearsonr(reward, length).statistic
        out["corr/reward_length_spearman"] = stats.spearmanr(reward, length).statistic
    # where length variance lives: each row carries its group's mean, so the variance of
    # those is the between-prompt part (size-weighted), the rest lies within groups
    group_mean = rows.groupby(rows.index // N)["response_length"].transform("mean")
    group_mean = group_mean.to_numpy(float)
    out["length/within_group_std"] = np.sqrt(np.mean((length - group_mean) ** 2))
    if length.var() > 0:
        out["length/between_prompt_frac"] = group_mean.var() / length.var()
    within = []
    for _, g in rows.groupby(rows.index // N):  # rows are stored group by group
        r, ln = g["reward"].to_numpy(float), g["response_length"].to_numpy(float)
        if np.ptp(r) > 0 and np.ptp(ln) > 0:
            within.append(stats.spearmanr(r, ln).statistic)
    if within:
        out["corr/within_group_spearman"] = float(np.mean(within))
        out["corr/within_group_count"] = len(within)
    return out


def test_metrics_match_a_recomputation_from_parquet(run_dir: Path) -> None:
    metrics = read_metrics(run_dir)
    rollouts = read_rollouts(run_dir)
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert len(rollouts) == STEPS * PROMPTS * N
    checked = 0
    for m in metrics:
        rows = rollouts[rollouts["step"] == m["step"]].reset_index(drop=True)
        assert list(rows["prompt_id"].to_numpy()[::N].repeat(N)) == list(rows["prompt_id"])
        expected = expected_metrics(rows)
        for key, value in expected.items():
            assert key in m, f"step {m['step']}: {key} missing"
            assert m[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            checked += 1
        corr_keys = {k for k in m if k.startswith("corr/")}
        assert corr_keys == {k for k in expected if k.startswith("corr/")}
        assert m["reward/format_mean"] == pytest.approx(rows["format"].mean())
        assert m["max_len"] == CAP
    assert checked >= STEPS * 17


def test_wandb_offline_run_has_histograms_and_scalars_at_every_step(run_dir: Path) -> None:
    history = read_wandb_history(find_run_file(run_dir))
    metrics = {m["step"]: m for m in read_metrics(run_dir)}
    assert sorted(history) == list(range(STEPS))
    for step, row in history.items():
        hist = row["length/hist"]
        assert sum(hist["values"]) == PROMPTS * N
        assert hist["bins"][0] == 0 and hist["bins"][-1] == CAP
        assert row["step"] == step
        for key in ["length/mean", "length/clip_ratio", "reward/mean",
                    *[k for k in metrics[step] if k.startswith("corr/")]]:
            assert row[key] == pytest.approx(metrics[step][key]), key
