"""`grpo run resume=<run-id>`: continue from the last complete checkpoint, through the real
CLI (DeepSpeed checkpoints on CPU, W&B offline)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from grpo_cli.telemetry.store import read_metrics, read_rollouts
from grpo_cli.telemetry.wandb_files import read_wandb_history
from tests.helpers import TINY, Gate, run_id_of, start_grpo

BASE = [*TINY, "trainer.val_every=2", "val.num_prompts=4", "logger.sample_every=1"]


def comparable(metrics: list[dict]) -> list[dict]:
    """Everything but timings."""
    return [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in metrics]


@pytest.mark.parametrize("extra", [[], ["algorithm=dapo"]], ids=["grpo", "dynamic-sampling"])
def test_resumed_run_matches_an_uninterrupted_run_step_for_step(grpo, runs_dir: Path,
                                                                extra: list[str]) -> None:
    """With dynamic sampling a step draws a varying number of prompts: the resumed run
    continues from the prompt sampler's saved position, so it draws the same ones."""
    full = run_id_of(grpo("run", *BASE, *extra, "trainer.steps=5"))
    # Stops after step 3 with its last checkpoint at step 2: step 3 must be redone.
    part = run_id_of(grpo("run", *BASE, *extra, "trainer.steps=4", "trainer.save_every=3"))
    assert run_id_of(grpo("run", f"resume={part}", "trainer.steps=5")) == part

    expected, got = read_metrics(runs_dir / full), read_metrics(runs_dir / part)
    assert [m["step"] for m in got] == list(range(5))
    for want, have in zip(comparable(expected), comparable(got), strict=True):
        assert have.keys() == want.keys(), have["step"]
        for key, value in want.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (have["step"], key)
    lines = (runs_dir / part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(5))  # no duplicates
    rollouts = read_rollouts(runs_dir / part)
    full_rollouts = read_rollouts(runs_dir / full)
    if not extra:
        assert rollouts.groupby("step").size().to_dict() == {s: 2 * 4 for s in range(5)}
    else:  # some step drew a second round, among the steps after the checkpoint too
        assert rollouts.groupby("step").size().to_dict()[3] > 2 * 4
    for column in ("prompt_id", "response_length"):
        assert rollouts[column].tolist() == full_rollouts[column].tolist()
    samples = (runs_dir / part / "samples.jsonl").read_text().splitlines()
    assert sorted({json.loads(s)["step"] for s in samples}) == list(range(5))
    meta = json.loads((runs_dir / part / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["resumed_from_step"] == 2
    # One W&B run id, two offline segments: together every step exactly once. Step 3 was
    # logged before the stop, so the resumed process does not send it again.
    files = sorted((runs_dir / part / "wandb").glob(f"offline-run-*/run-{part}.wandb"))
    assert len(files) == 2
    first, second = (read_wandb_history(f) for f in files)
    assert sorted(first) == [0, 1, 2, 3] and sorted(second) == [4]
    for m in got:
        logged = (first | second)[m["step"]]
        assert logged["length/mean"] == pytest.approx(m["length/mean"]), m["step"]


def test_kill_9_then_resume_matches_an_uninterrupted_run(grpo, runs_dir: Path) -> None:
    """kill -9 mid-run (held at a known step by a gate in the reward), plus the leftover of a
    kill during a checkpoint write (the newest checkpoint directory without its completion
    marker, shards cut short), then resume: every step is recorded exactly once and the
    metrics equal an uninterrupted run's (same reward scores, no gate)."""
    import shutil

    steps = 8
    gate = Gate(runs_dir.parent, at=6)  # killed while step 5 scores: steps 0-4 are recorded
    args = [*TINY, f"trainer.steps={steps}", "trainer.save_every=2", "trainer.val_every=0",
            gate.reward]
    full = run_id_of(grpo("run", *args, "logger.wandb.mode=disabled", "run_id=full",
                          "reward.function=grpo_cli.rewards.math:compute_score"))
    proc = start_grpo(  # W&B offline too: its files are cut short by the kill as well
        runs_dir, "run", *args, "run_id=killed", "logger.wandb.mode=offline",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = runs_dir / "killed" / "metrics.jsonl"
    gate.wait(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    gate.open()  # the resumed process counts its own calls: let its 6th pass
    assert len(metrics.read_text().splitlines()) == 5
    assert json.loads((runs_dir / "killed" / "meta.json").read_text())["status"] == "running"
    ckpts = runs_dir / "killed" / "checkpoints"
    done = sorted(p for p in ckpts.glob("step-*") if (p / "complete.json").is_file())
    torn = ckpts / "step-000099"  # what a kill during a save leaves: no marker, cut shards
    shutil.copytree(done[-1], torn)
    (torn / "complete.json").unlink()
    for shard in torn.glob("*.pt"):
        shard.write_bytes(shard.read_bytes()[:100])

    res = grpo("run", "resume=killed")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(steps))
    counts = read_rollouts(runs_dir / "killed").groupby("step").size()
    assert counts.to_dict() == {s: 2 * 4 for s in range(steps)}
    meta = json.loads((runs_dir / "killed" / "meta.json").read_text())
    assert meta["status"] == "completed"
    assert meta["resumed_from_step"] == int(done[-1].name.split("-")[1])  # not the torn one
    expected = comparable(read_metrics(runs_dir / full))
    for want, have in zip(expected, comparable(read_metrics(runs_dir / "killed")), strict=True):
        for key, value in want.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (have["step"], key)
    # W&B: the segments of the one run id hold every step exactly once. The kill can land
    # before W&B's service wrote any record of the first process (seen under load): then the
    # resumed process sends every step from the store, and its segment holds them all.
    segments = [read_wandb_history(f)
                for f in sorted((runs_dir / "killed" / "wandb").glob("offline-run-*/*.wandb"))]
    assert 1 <= len(segments) <= 2 and segments[-1]
    assert sorted(step for seg in segments for step in seg) == list(range(steps))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["resume=nope"], "resume=nope: no run with that id"),
        (["resume=../etc"], "invalid run id"),
        (["resume=r", "max_len=64"], "data.max_response_length cannot change when resuming"),
    ],
)
def test_bad_resume_is_one_line_exit_2(grpo, runs_dir: Path, args: list[str],
                                       expected: str) -> None:
    (runs_dir / "r").mkdir(parents=True)
    (runs_dir / "r" / "config.yaml").write_text("seed: 0\n")
    res = grpo("run", *args)
    assert res.returncode == 2 and expected in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_resume_without_a_complete_checkpoint_says_so(grpo, runs_dir: Path) -> None:
    run_id = run_id_of(grpo("run", *TINY, "trainer.steps=1", "logger.wandb.mode=disabled"))
    res = grpo("run", f"resume={run_id}")
    assert res.returncode == 2 and "no complete checkpoint" in res.stderr
