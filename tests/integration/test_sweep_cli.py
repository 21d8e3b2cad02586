"""`grpo sweep` through the real CLI and Hydra's launchers (joblib, submitit_local)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from grpo_cli.telemetry.store import read_metrics
from tests.helpers import TINY, run_grpo, start_grpo

SHORT = [*TINY, "trainer.steps=2", "logger.wandb.mode=offline"]


def manifest(runs_dir: Path) -> dict:
    (path,) = list((runs_dir / "sweeps").glob("*/manifest.json"))
    return json.loads(path.read_text())


def test_dry_run_lists_the_cartesian_product_and_starts_nothing(grpo, runs_dir: Path) -> None:
    res = grpo("sweep", "--dry-run", "max_len=16,24", "seed=1,2,3", "trainer.steps=2")
    assert res.returncode == 0, res.stderr
    assert "6 arms" in res.stdout
    arms = [line for line in res.stdout.splitlines() if line.strip().startswith("[")]
    assert len(arms) == 6
    assert "max_len=16 seed=1" in arms[0]  # the short name, as typed
    assert not runs_dir.exists() or not any(runs_dir.rglob("meta.json"))


def test_joblib_sweep_two_parallel_arms(grpo, runs_dir: Path) -> None:
    res = grpo("sweep", "max_len=16,24", *SHORT, "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2")
    assert res.returncode == 0, res.stderr[-3000:]
    man = manifest(runs_dir)
    assert man["status"] == "completed" and len(man["arms"]) == 2
    run_ids = [a["run_id"] for a in man["arms"]]
    assert len(set(run_ids)) == 2
    caps = set()
    for run_id in run_ids:
        meta = json.loads((runs_dir / run_id / "meta.json").read_text())
        assert meta["status"] == "completed" and meta["sweep_id"] == man["sweep_id"]
        metrics = read_metrics(runs_dir / run_id)
        assert len(metrics) == 2
        caps.add(metrics[0]["max_len"])
        config = yaml.safe_load((runs_dir / run_id / "config.yaml").read_text())
        assert config["trainer"]["num_threads"] == max(1, (os.cpu_count() or 1) // 2)
        wandb_runs = list((runs_dir / run_id / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 1 and run_id in wandb_runs[0].name
    assert caps == {16, 24}
    assert "2/2 arms completed" in res.stdout
    # one line per arm as it starts, under the names typed, and nothing from Hydra itself
    starts = sorted(line for line in res.stderr.splitlines()
                    if line.startswith("grpo sweep: arm "))
    assert starts == [f"grpo sweep: arm {i} (max_len={cap}) -> {run_ids[i]}"
                      for i, cap in enumerate((16, 24))]
    assert "[HYDRA]" not in res.stdout + res.stderr
    # the sweep, not each arm, says what to type next
    assert res.stderr.count("grpo report") == 1
    assert res.stderr.splitlines()[-1].startswith(f"next: grpo report {man['sweep_id']}  ")


def test_failing_arm_does_not_stop_the_other_and_resume_retries_it(
    grpo, runs_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def fn(batch):\n    raise ValueError('boom')\n")
    args = ["sweep", f"reward.function={bad}:fn,grpo_cli.rewards.math:compute_score", *SHORT,
            "max_len=16", "logger.wandb.mode=disabled"]
    res = grpo(*args)
    assert res.returncode == 1
    man = manifest(runs_dir)
    statuses = [a["status"] for a in man["arms"]]
    assert statuses == ["failed", "completed"], statuses
    assert "boom" in res.stderr
    done = runs_dir / man["arms"][1]["run_id"]
    before = (done / "metrics.jsonl").read_text()

    # Fix the reward file and resume: only the failed arm runs again.
    bad.write_text("def fn(batch):\n    return [0.5 for _ in batch]\n")
    res2 = grpo(args[0], "--resume", man["sweep_id"], *args[1:])
    assert res2.returncode == 0, res2.stderr[-3000:]
    man2 = manifest(runs_dir)
    assert [a["status"] for a in man2["arms"]] == ["completed", "completed"]
    assert man2["arms"][0]["run_id"].endswith("-r1")
    # the completed arm keeps its run: same id, no new directory, records untouched
    assert man2["arms"][1]["run_id"] == man["arms"][1]["run_id"]
    assert not (runs_dir / f"{man['arms'][1]['run_id']}-r1").exists()
    assert (done / "metrics.jsonl").read_text() == before


def test_resume_continues_an_unfinished_arm_from_its_checkpoint(
    grpo, runs_dir: Path, tmp_path: Path
) -> None:
    """Arm 0 dies at step 2 after checkpoints at steps 0 and 1; --resume continues that same
    run from step 1's checkpoint instead of starting a new one."""
    flaky = tmp_path / "flaky.py"
    calls = tmp_path / "calls.txt"
    flaky.write_text(
        "from pathlib import Path\n"
        f"CALLS = Path({str(calls)!r})\n"
        "def fn(batch):\n"
        "    with CALLS.open('a') as f:\n"
        "        f.write('x')\n"
        "    if len(CALLS.read_text()) == 3:\n"
        "        raise RuntimeError('preempted')\n"
        "    return [0.5 for _ in batch]\n"
    )
    args = ["sweep", "max_len=16,24", *SHORT, "trainer.steps=4", "trainer.save_every=1",
            "trainer.val_every=0", f"reward.function={flaky}:fn", "logger.wandb.mode=disabled"]
    res = grpo(*args)
    assert res.returncode == 1
    first = manifest(runs_dir)["arms"][0]
    assert first["status"] == "failed" and "preempted" in res.stderr
    res2 = grpo(args[0], "--resume", manifest(runs_dir)["sweep_id"], *args[1:])
    assert res2.returncode == 0, res2.stderr[-3000:]
    arm = manifest(runs_dir)["arms"][0]
    assert arm["status"] == "completed" and arm["run_id"] == first["run_id"]  # same run
    lines = (runs_dir / arm["run_id"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]
    meta = json.loads((runs_dir / arm["run_id"] / "meta.json").read_text())
    assert meta["resumed_from_step"] == 1 and meta["status"] == "completed"


def test_submitit_local_launcher_runs_an_arm(grpo, runs_dir: Path) -> None:
    res = grpo("sweep", "max_len=16", *SHORT, "logger.wandb.mode=disabled",
               "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    (arm,) = manifest(runs_dir)["arms"]
    assert arm["status"] == "completed"
    assert len(read_metrics(runs_dir / arm["run_id"])) == 2


def test_slurm_launcher_submits_one_multi_gpu_job_per_arm(runs_dir: Path, tmp_path: Path) -> None:
    """`hydra/launcher=slurm`: Hydra's submitit launcher writes one sbatch array, one task
    per arm, each with trainer.nodes nodes of trainer.gpus GPUs. There is no SLURM here:
    `sbatch` is a stand-in on PATH that keeps the script it is given and refuses to submit
    (and `srun` one that submitit looks for), so everything up to the submission is the real
    Hydra and submitit."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "kept"
    bin_dir.mkdir()
    kept.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\ncp "$1" {kept}/\necho "sbatch: stand-in, not submitted" >&2\n'
                      "exit 1\n")
    sbatch.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks it exists
    (bin_dir / "srun").chmod(0o755)
    res = run_grpo(runs_dir, "sweep", "max_len=1024,2048",
                   "config=conf/experiment/geo3k_qwen2_5_vl_7b.yaml", "rollout.backend=hf",
                   "trainer.nodes=2", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                   env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, timeout=300)
    assert res.returncode != 0  # nothing was submitted
    (script,) = [p.read_text() for p in kept.iterdir()]
    header = {line for line in script.splitlines() if line.startswith("#SBATCH")}
    assert {"#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
            "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=64", "#SBATCH --mem=480GB",
            "#SBATCH --time=2880"} <= header, sorted(header)
    assert "#SBATCH --array=0-1%2" in header  # the two arms, one job each
    assert "srun" in script and "submitit.core._submit" in script


def test_a_preempted_multi_rank_submitit_arm_is_resumed_by_sweep_resume(runs_dir: Path) -> None:
    """An arm with trainer.gpus=2 runs `grpo run config=<arm>.yaml` under torchrun (2 CPU
    ranks) in a submitit_local job. SIGTERM to that job (what a cluster's preemption sends)
    reaches the ranks: the step is saved, the arm is `interrupted` in the manifest, the sweep
    says how to continue, and `grpo sweep --resume` finishes the arm in the same run."""
    import signal
    import time

    common = [*TINY, "logger.wandb.mode=disabled", "trainer.gpus=2", "trainer.val_every=0",
              "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    proc = start_grpo(runs_dir, "sweep", "max_len=16", *common, "trainer.steps=500",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env={"OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not list(runs_dir.glob("sweep-*-000/metrics.jsonl")) or \
            not next(runs_dir.glob("sweep-*-000/metrics.jsonl")).read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    # this sweep's own job process (other sweeps may run on the machine)
    job = [p for p in psutil.Process(proc.pid).children(recursive=True)
           if "submitit.local._local" in " ".join(p.cmdline())]
    assert len(job) == 1, job
    job[0].send_signal(signal.SIGTERM)  # the job, not the sweep process
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    m = manifest(runs_dir)
    (arm,) = m["arms"]
    assert (m["status"], arm["status"]) == ("interrupted", "interrupted")
    assert f"continue with: grpo sweep --resume {m['sweep_id']} max_len=16" in err
    run = runs_dir / arm["run_id"]
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["status"], meta["world_size"]) == ("interrupted", 2)
    assert meta["sweep_id"] == m["sweep_id"]
    saved = meta["last_checkpoint_step"]
    assert saved == len(read_metrics(run)) - 1 < 3  # the step it stopped at is saved

    res = run_grpo(runs_dir, "sweep", "--resume", m["sweep_id"], "max_len=16", *common,
                   "trainer.steps=4", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert manifest(runs_dir)["arms"][0]["status"] == "completed"
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["status"], meta["resumed_from_step"]) == ("completed", saved)
    assert [m["step"] for m in read_metrics(run)] == [0, 1, 2, 3]
    arm_file = runs_dir / "sweeps" / m["sweep_id"] / "arms" / "000.yaml"
    assert yaml.safe_load(arm_file.read_text())["data"]["max_response_length"] == 16


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_marks_the_sweep_interrupted_and_resume_continues_the_arm(
        runs_dir: Path, signum: str) -> None:
    """Ctrl-C or SIGTERM during a sequential sweep: the running arm finishes its step and
    saves it, the sweep stops there (SIGTERM once went on with the next arm: Hydra's launcher
    took the arm's stop for a failed job), the manifest says `interrupted` (never `running`
    for a sweep that ended) and `--resume` continues that arm's own run from its checkpoint."""
    import signal
    import subprocess

    from tests.helpers import Gate, start_grpo

    gate = Gate(runs_dir.parent, at=3)  # arm 0 signalled while step 2 scores its batch
    args = ["sweep", "max_len=16,24", *SHORT, "trainer.steps=200", "trainer.val_every=0",
            "logger.wandb.mode=disabled", gate.reward]
    proc = start_grpo(runs_dir, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gate.wait(proc)
    proc.send_signal(getattr(signal, signum))
    gate.open()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, signum), err[-2000:]
    man = manifest(runs_dir)
    assert man["status"] == "interrupted" and "end_time" in man, man
    assert [a["status"] for a in man["arms"]] == ["interrupted", "pending"]
    run_id = man["arms"][0]["run_id"]
    done = len(read_metrics(runs_dir / run_id))
    assert done == 3  # steps 0-2: the one the signal arrived in finished, no later one

    # shorter now: finish both arms (the resumed arm continues its own run)
    short = [a if a != "trainer.steps=200" else f"trainer.steps={done + 1}" for a in args]
    res = run_grpo(runs_dir, short[0], "--resume", man["sweep_id"], *short[1:])
    assert res.returncode == 0, res.stderr[-3000:]
    man2 = manifest(runs_dir)
    assert man2["status"] == "completed"
    assert man2["arms"][0]["run_id"] == run_id
    assert [m["step"] for m in read_metrics(runs_dir / run_id)] == list(range(done + 1))
