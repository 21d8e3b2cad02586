"""Safe by default: secrets never land in the run store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, TINY, cli_env

SECRET = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key


def test_wandb_api_key_is_never_written_to_the_run(runs_dir: Path) -> None:
    env = cli_env(runs_dir) | {"WANDB_API_KEY": SECRET}
    res = subprocess.run([sys.executable, "-m", "grpo_cli", "run", *TINY, "trainer.steps=1",
                          "logger.wandb.mode=offline", "logger.sample_every=1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert SECRET not in res.stdout + res.stderr
    files = [p for p in runs_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "the offline W&B run is part of the check"
    leaked = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
