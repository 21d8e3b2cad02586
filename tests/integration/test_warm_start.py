"""`grpo run model.warm_start.data=...` through the real CLI: the run trains and samples from
the warm-started checkpoint (its step 0 is that of a run pointed at the checkpoint), builds it
once, and a second run that finds it cached is the same run to the token."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from grpo_cli.telemetry.store import read_rollouts
from tests.helpers import TINY, run_grpo, run_id_of

WARM = ["model.warm_start.data=toy:add", "model.warm_start.steps=6",
        "model.warm_start.batch_size=4", "model.warm_start.lr=3e-3"]
ARGS = [*TINY, "trainer.steps=2", "trainer.val_every=0", "logger.wandb.mode=disabled",
        "max_len=48"]


def step_rows(runs_dir: Path, run_id: str) -> pd.DataFrame:
    rows = read_rollouts(runs_dir / run_id)
    return rows[["step", "prompt_id", "sample", "response_length", "truncated", "reward",
                 "logratio_sum"]].sort_values(["step", "prompt_id", "sample"],
                                              ignore_index=True)


def test_a_run_starts_from_its_warm_start_built_once(tmp_path: Path) -> None:
    env = {"GRPO_CACHE_DIR": str(tmp_path / "cache")}
    runs = tmp_path / "runs"

    first = run_grpo(runs, "run", *ARGS, *WARM, env=env)
    first_id = run_id_of(first)
    assert first.stderr.count("warm start: 6 supervised steps on toy:add") == 1
    model_dir = Path(json.loads((runs / first_id / "meta.json").read_text())["model_dir"])
    assert model_dir.parent == tmp_path / "cache" / "warm-start"
    assert json.loads((model_dir / "warm_start.json").read_text())["warm_start"]["steps"] == 6

    again = run_grpo(runs, "run", *ARGS, *WARM, env=env)
    assert "warm start:" not in again.stderr  # cached
    same = step_rows(runs, run_id_of(again))
    pd.testing.assert_frame_equal(same, step_rows(runs, first_id))

    # the warm-started checkpoint as model.path: the same two steps, so the run above
    # trained and sampled from it (policy, sampler and the reward's inputs alike)
    direct = run_grpo(runs, "run", *ARGS, f"model.path={model_dir}", env=env)
    pd.testing.assert_frame_equal(step_rows(runs, run_id_of(direct)), same)

    base = run_grpo(runs, "run", *ARGS, env=env)  # the toy as it ships samples otherwise
    assert not step_rows(runs, run_id_of(base)).equals(same)
