"""Checkpoint bookkeeping: completion markers and RNG state round trips (the DeepSpeed side
is exercised end to end by the resume tests in tests/integration/test_resume.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from grpo_cli.train.checkpoint import COMPLETE, last_complete_step, rng_state, set_rng_state


def test_only_checkpoints_with_a_completion_marker_count(tmp_path: Path) -> None:
    assert last_complete_step(tmp_path / "missing") is None
    for step, complete in ((2, True), (5, True), (8, False)):
        d = tmp_path / f"step-{step:06d}"
        d.mkdir()
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (d / COMPLETE).write_text(json.dumps({"step": step}))
    (tmp_path / "latest").write_text("step-000008")  # DeepSpeed's pointer is not trusted
    (tmp_path / "step-x").mkdir()
    assert last_complete_step(tmp_path) == 5


def test_rng_state_round_trips_and_loads_with_weights_only(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
