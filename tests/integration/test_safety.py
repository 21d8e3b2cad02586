"""Safe by default and under faults: secrets never land in the run store; a diverging run
and a full disk stop in one line with the records intact."""

from __future__ import annotations

import json
import resource
import signal
from pathlib import Path

from grpo_cli.telemetry.store import read_metrics, read_rollouts
from tests.helpers import TINY, run_grpo

SECRET = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key


def test_wandb_api_key_is_never_written_to_the_run(runs_dir: Path) -> None:
    res = run_grpo(runs_dir, "run", *TINY, "trainer.steps=1", "logger.wandb.mode=offline",
                   "logger.sample_every=1", env={"WANDB_API_KEY": SECRET}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert SECRET not in res.stdout + res.stderr
    files = [p for p in runs_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "the offline W&B run is part of the check"
    leaked = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []


def test_diverging_run_skips_bad_updates_then_stops_at_max_bad_steps(runs_dir: Path,
                                                                      tmp_path: Path) -> None:
    """A reward function whose scores overflow float32 (1e300) makes every loss and gradient
    non-finite: each such update is skipped and counted, and the second one over
    trainer.max_bad_steps=1 stops the run with one line naming the setting."""
    reward = tmp_path / "overflow.py"
    reward.write_text("def compute_score(inputs):\n"
                      "    return [{'overall': 1e300 if i % 2 else -1e300}\n"
                      "            for i, _ in enumerate(inputs)]\n")
    res = run_grpo(runs_dir, "run", *TINY, "trainer.steps=6", "run_id=div",
                   "logger.wandb.mode=disabled", f"reward.function={reward}:compute_score",
                   "algorithm.norm_adv_by_std=false", "trainer.max_bad_steps=1", timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 optimiser updates had non-finite gradients")
    assert "trainer.max_bad_steps=1" in last and "Traceback" not in res.stderr
    meta = json.loads((runs_dir / "div" / "meta.json").read_text())
    assert meta["status"] == "failed"
    (row,) = read_metrics(runs_dir / "div")  # step 0 recorded; step 1 stopped the run
    assert row["train/skipped_updates"] == 1 and row["train/skipped_updates_total"] == 1


def _limit_file_size() -> None:
    """In the child: files may not grow past 1.5 MB, and hitting the limit is a write error
    (EFBIG) rather than a signal, as a full disk (ENOSPC) would be."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_checkpoint_that_cannot_be_written_fails_in_one_line_and_keeps_the_records(
        runs_dir: Path) -> None:
    """A full disk, simulated with a file size limit that the 3 MB model checkpoint exceeds
    while the run's records fit: exit 1, one line naming the checkpoint, the partial
    checkpoint removed, every step before it readable, status failed."""
    res = run_grpo(runs_dir, "run", *TINY, "trainer.steps=4", "run_id=full",
                   "trainer.save_every=2", "logger.wandb.mode=offline", "logger.sample_every=1",
                   timeout=300, preexec_fn=_limit_file_size)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: checkpoint ") and "step-000001 could not be written" in last
    assert "Traceback" not in res.stderr
    run = runs_dir / "full"
    assert list((run / "checkpoints").glob("step-*")) == []
    assert [m["step"] for m in read_metrics(run)] == [0, 1]
    assert sorted(read_rollouts(run)["step"].unique().tolist()) == [0, 1]
    assert json.loads((run / "meta.json").read_text())["status"] == "failed"
