"""`grpo run` end to end through the real CLI on the embedded toy model (CPU, DeepSpeed, W&B
offline), checking the run store against DESIGN.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from grpo_cli.telemetry.store import read_metrics, read_rollouts
from tests.helpers import REPO, TINY, Gate, cli_env, run_grpo, start_grpo


def run_dir_of(runs_dir: Path, stdout: str) -> Path:
    run_id = stdout.strip().splitlines()[-1]
    path = runs_dir / run_id
    assert path.is_dir(), stdout
    return path


def test_run_writes_a_complete_store(grpo, runs_dir: Path) -> None:
    steps, prompts, n, cap = 3, 2, 4, 24
    res = grpo("run", *TINY, f"trainer.steps={steps}", f"max_len={cap}",
               "logger.sample_every=1", "trainer.save_final=true")
    assert res.returncode == 0, res.stderr[-3000:]
    run = run_dir_of(runs_dir, res.stdout)

    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["world_size"] == 1
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["max_response_length"] == cap and config["run_id"] == run.name

    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(steps))
    rollouts = read_rollouts(run)
    assert len(rollouts) == steps * prompts * n
    for m in metrics:
        rows = rollouts[rollouts["step"] == m["step"]]
        assert m["length/clip_ratio"] == pytest.approx(rows["truncated"].mean())
        assert m["length/mean"] == pytest.approx(rows["response_length"].mean())
        assert m["max_len"] == cap
        for key in ("reward/mean", "policy/entropy", "loss/pg", "perf/step_s"):
            assert np.isfinite(m[key]), key
    # Truncated means stopped by the cap: exactly cap tokens; others ended with EOS.
    assert (rollouts.loc[rollouts["truncated"], "response_length"] == cap).all()
    assert (rollouts["response_length"] <= cap).all() and (rollouts["response_length"] >= 1).all()
    assert rollouts["truncated"].any(), "cap 24 should truncate some toy completions"

    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == set(range(steps))
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), "W&B offline run missing"
    assert any((run / "checkpoints").iterdir()), "save_final wrote no checkpoint"


def test_validation_probe_runs_on_schedule_at_its_own_cap(grpo, runs_dir) -> None:
    """val/ metrics appear every val_every steps, the first and last step included, from
    val.num_prompts x val.n samples at the probe's cap, not at the training cap."""
    res = grpo("run", *TINY, "trainer.steps=4", "max_len=8", "trainer.val_every=2",
               "val.num_prompts=4", "val.n=2", "val.max_len=64")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = read_metrics(run_dir_of(runs_dir, res.stdout))
    assert ["val/length/mean" in m for m in metrics] == [True, False, True, True]
    for m in (metrics[0], metrics[2], metrics[3]):
        assert m["val/length/max"] <= 64
        assert m["val/length/max"] > 8  # the toy's natural answers exceed the training cap
        assert m["val/length/clip_ratio"] < m["length/clip_ratio"]
        assert m["max_len"] == 8


def test_cfg_job_prints_the_composed_config(grpo) -> None:
    res = grpo("run", "--cfg", "job", "max_len=96", "algorithm=dr_grpo")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["data"]["max_response_length"] == 96
    assert cfg["algorithm"]["loss_agg_mode"] == "seq-mean-token-sum-norm"


def test_reward_that_raises_stops_the_run_and_marks_it_failed(grpo, runs_dir, tmp_path) -> None:
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def fn(batch):\n    raise RuntimeError('grader exploded')\n")
    res = grpo("run", *TINY, "trainer.steps=2", "max_len=16", f"reward.function={bad}:fn")
    assert res.returncode == 1
    assert "grader exploded" in res.stderr and "Traceback" not in res.stderr
    (run,) = list(runs_dir.iterdir())
    assert json.loads((run / "meta.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(("zero_stage", "self_launched"), [(2, True), (3, False)])
def test_two_cpu_ranks(runs_dir: Path, zero_stage: int, self_launched: bool) -> None:
    """Two gloo ranks: prompts split across ranks, metrics over the gathered global batch.
    Started by `grpo run trainer.gpus=2` itself (through torchrun), or by torchrun directly."""
    steps, prompts, n = 2, 4, 4
    args = [*TINY, f"trainer.prompts_per_step={prompts}", f"trainer.steps={steps}", "max_len=24",
            f"trainer.zero_stage={zero_stage}", "algorithm.kl_coef=0.01"]
    if self_launched:
        res = run_grpo(runs_dir, "run", "trainer.gpus=2", *args, env={"OMP_NUM_THREADS": "1"})
    else:  # what a cluster script does: torchrun starts the ranks
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone", "-m", "grpo_cli", "run", *args]
        res = subprocess.run(cmd, cwd=REPO, env=cli_env(runs_dir, OMP_NUM_THREADS="1"),
                             capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert json.loads((run / "meta.json").read_text())["world_size"] == 2
    if self_launched:
        assert "launching: " in res.stderr and "--nproc_per_node=2" in res.stderr
        # the id given to every rank, printed once (DeepSpeed also writes to stdout)
        assert res.stdout.splitlines().count(run.name) == 1
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(steps))
    assert all("policy/kl" in m for m in metrics)
    # the sampler's log-probs are the trainer's (fp32, same weights, gathered under ZeRO-3;
    # a stale tied head measures ~1e-3)
    assert all(m["rollout/logprob_diff"] < 1e-5 for m in metrics)
    rollouts = read_rollouts(run)
    assert len(rollouts) == steps * prompts * n  # both ranks' completions, once each
    assert os.path.isdir(run / "wandb")


def _signal_during_step_2(runs_dir: Path, sig: str, *args: str) -> tuple[int, str]:
    """Start a long `grpo run` (run id `sig`) and send ``sig`` while step 2 scores its
    batch (a gate in its reward holds the step there); the exit code and stderr."""
    import signal

    gate = Gate(runs_dir.parent, at=3)  # steps 0 and 1 scored, no probe (val_every=0)
    proc = start_grpo(runs_dir, "run", *TINY, "trainer.steps=500", "max_len=16",
                      "logger.wandb.mode=disabled", "run_id=sig", "trainer.val_every=0",
                      gate.reward, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gate.wait(proc)
    proc.send_signal(getattr(signal, sig))
    gate.open()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize(("sig", "code", "name"), [("SIGTERM", 143, "SIGTERM"),
                                                   ("SIGINT", 130, "Ctrl-C")])
def test_signal_finishes_the_step_checkpoints_and_resumes(runs_dir: Path, sig: str,
                                                          code: int, name: str) -> None:
    """SIGTERM (preemption) or Ctrl-C with the defaults: the run says at once that it is
    finishing the step; the step completes, a checkpoint of it is written, the run is marked
    interrupted with the conventional exit code and ends with the command that continues it;
    `resume=` continues right after that step."""
    returncode, err = _signal_during_step_2(runs_dir, sig)
    assert returncode == code, err[-2000:]
    assert (f"grpo: {name}: finishing the current step, saving a checkpoint, then stopping "
            f"({name} again stops at once)") in err
    meta = json.loads((runs_dir / "sig" / "meta.json").read_text())
    assert meta["status"] == "interrupted" and "end_time" in meta
    steps = [m["step"] for m in read_metrics(runs_dir / "sig")]
    assert steps == [0, 1, 2]  # the step the signal arrived in was finished, no later one
    assert meta["last_checkpoint_step"] == steps[-1]  # the finished step was saved
    assert (f"grpo: run sig stopped; step {steps[-1]} is saved. Continue with: "
            "grpo run resume=sig") in err

    res = run_grpo(runs_dir, "run", "resume=sig", f"trainer.steps={len(steps) + 2}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert [m["step"] for m in read_metrics(runs_dir / "sig")] == list(range(len(steps) + 2))


def test_a_trainer_the_kernel_kills_is_recorded_as_failed(runs_dir: Path) -> None:
    """SIGKILL (what the out-of-memory killer sends) reaches the trainer, not `grpo run`,
    and cannot be caught: the waiting `grpo run` says what happened, records the run as
    failed with the reason, and exits 137. `grpo ls` then shows it failed, not running."""
    import signal
    import time

    from grpo_cli.elastic import child_pids

    proc = start_grpo(runs_dir, "run", *TINY, "trainer.steps=500", "max_len=16",
                      "logger.wandb.mode=disabled", "run_id=oom",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = runs_dir / "oom" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text()):
        time.sleep(0.2)
    (trainer,) = child_pids(proc.pid)
    os.kill(trainer, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 137, err[-2000:]
    assert "error: the trainer was killed by SIGKILL (what the kernel's out-of-memory killer " \
           "sends" in err
    meta = json.loads((runs_dir / "oom" / "meta.json").read_text())
    assert meta["status"] == "failed" and "killed by SIGKILL" in meta["error"]
    listed = run_grpo(runs_dir, "ls")
    assert "oom" in listed.stdout and "failed" in listed.stdout, listed.stdout


def test_interrupt_without_saving_says_it_cannot_resume(runs_dir: Path) -> None:
    """trainer.save_on_interrupt=false: the exit says there is nothing to resume, and
    `resume=` is refused naming the key that would have saved one."""
    returncode, err = _signal_during_step_2(runs_dir, "SIGINT",
                                            "trainer.save_on_interrupt=false")
    assert returncode == 130, err[-2000:]
    assert "finishing the current step, no checkpoint (trainer.save_on_interrupt=false)" in err
    assert "grpo: run sig stopped with no checkpoint, so it cannot be resumed" in err
    res = run_grpo(runs_dir, "run", "resume=sig")
    assert res.returncode == 2
    assert res.stderr.startswith("error: resume=sig: no complete checkpoint")
    assert "trainer.save_on_interrupt=true" in res.stderr


def test_reward_kwargs_without_plus_and_a_fitted_micro_batch(grpo, runs_dir: Path,
                                                            tmp_path: Path) -> None:
    """`reward.kwargs.k=v` and `reward.kwargs={k: v}` reach the reward function (no `+`
    needed); a small batch with trainer.micro_batch_size unset trains with the largest
    micro-batch that divides it (4 prompts x 4 samples: 16), recorded in config.yaml."""
    reward = tmp_path / "weighted.py"
    reward.write_text("def fn(batch, format_weight=0.0, scale=1.0):\n"
                      "    return [format_weight * scale for _ in batch]\n")
    res = grpo("run", *TINY, "trainer.micro_batch_size=null", "rollout.n=4",
               "trainer.prompts_per_step=4", "trainer.steps=1", "trainer.val_every=0",
               "max_len=8", f"reward.function={reward}:fn", "reward.kwargs.format_weight=0.25",
               "reward.kwargs={scale: 2.0}", "logger.wandb.mode=disabled")
    assert res.returncode == 0, res.stderr[-3000:]
    run = run_dir_of(runs_dir, res.stdout)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["reward"]["kwargs"] == {"format_weight": 0.25, "scale": 2.0}
    assert config["trainer"]["micro_batch_size"] == 16
    rewards = read_rollouts(run)["reward"]
    assert len(rewards) == 16 and (rewards == 0.5).all()
