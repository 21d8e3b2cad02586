"""Parallel sweep arms on one host split the CPU cores instead of oversubscribing them."""

from __future__ import annotations

import pytest

from grpo_cli.sweep import arm_threads

JOBLIB = "hydra/launcher=joblib"


@pytest.mark.parametrize(
    ("overrides", "arms", "cpus", "expected"),
    [
        ([], 4, 2, 0),  # basic launcher: arms run one after another, torch's default
        (["hydra/launcher=submitit_slurm"], 4, 2, 0),  # one job per arm, own machines
        ([JOBLIB, "hydra.launcher.n_jobs=2"], 2, 2, 1),
        ([JOBLIB], 4, 2, 1),  # joblib's default n_jobs=-1: one arm per core
        ([JOBLIB, "hydra.launcher.n_jobs=2"], 2, 16, 8),
        ([JOBLIB, "hydra.launcher.n_jobs=4"], 1, 8, 8),  # fewer arms than jobs
        ([JOBLIB, "hydra.launcher.n_jobs=8"], 8, 2, 1),  # never below one thread
    ],
)
def test_arm_threads(overrides: list[str], arms: int, cpus: int, expected: int) -> None:
    assert arm_threads(overrides, arms, cpus) == expected
