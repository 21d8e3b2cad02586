"""Scale-out for real on one CPU machine: two `grpo run` processes as the two nodes of one run
(torchrun's c10d rendezvous and gloo over 127.0.0.1), preemption of a multi-rank run through
its launcher, a rank killed outright, and a rendezvous that cannot complete.

Each "node" is started exactly as a cluster's job script starts it (the script in docs/scaling.md):
the same command, the same trainer.master_addr/master_port, on every node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from grpo_cli.elastic import process_parents
from grpo_cli.launch import free_port
from grpo_cli.telemetry.store import read_metrics, read_rollouts
from tests.helpers import TINY, Gate, run_grpo, start_grpo

STEPS = 5
RUN = [*TINY, f"trainer.steps={STEPS}", "max_len=24", "trainer.val_every=0",
       "logger.wandb.mode=disabled", "algorithm.kl_coef=0.01"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # 2 ranks on 2 cores


def comparable(run: Path) -> list[dict]:
    """A run's metrics without timings."""
    return [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in read_metrics(run)]


def assert_same_training(got: Path, want: Path) -> None:
    """Step for step the same metrics and the same completions (lengths, rewards, advantages)."""
    a, b = comparable(got), comparable(want)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(STEPS))
    for have, expect in zip(a, b, strict=True):
        assert have.keys() == expect.keys()
        for key, value in expect.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (have["step"], key)
    ra, rb = read_rollouts(got), read_rollouts(want)
    for col in ("step", "prompt_id", "response_length", "truncated", "reward", "advantage"):
        assert ra[col].tolist() == pytest.approx(rb[col].tolist(), abs=1e-6), col


def run_dirs(runs_dir: Path) -> list[Path]:
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and p.name != "sweeps")


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a cached runner
    """The single-node reference: `grpo run trainer.gpus=2` (one node, two ranks), per ZeRO
    stage, run once for the module."""
    done: dict[int, Path] = {}

    def run(zero: int) -> Path:
        if zero not in done:
            runs = tmp_path_factory.mktemp(f"one-node-zero{zero}")
            res = run_grpo(runs, "run", *RUN, f"trainer.zero_stage={zero}", "trainer.gpus=2",
                           env=ONE_THREAD)
            assert res.returncode == 0, res.stderr[-3000:]
            (done[zero],) = run_dirs(runs)
        return done[zero]

    return run


def start_node(runs_dir: Path, port: int, *args: str) -> subprocess.Popen[str]:
    """One node's `grpo run`, as the job script starts it on every node."""
    return start_grpo(runs_dir, "run", *RUN, "trainer.nodes=2", "trainer.gpus=1",
                      "trainer.master_addr=127.0.0.1", f"trainer.master_port={port}", *args,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=ONE_THREAD)


@pytest.mark.parametrize("zero", [2, 3])
def test_two_nodes_over_loopback_train_like_one_node_of_two_ranks(
        runs_dir: Path, one_node, zero: int) -> None:  # noqa: ANN001 - the fixture's runner
    """Two nodes of one rank each meet at a c10d rendezvous, agree on one run id (global
    rank 0's), and only global rank 0 writes: one run store, whose metrics and completions
    equal the one-node two-rank run with the same seed."""
    port = free_port()
    nodes = [start_node(runs_dir, port, f"trainer.zero_stage={zero}") for _ in range(2)]
    outs = [n.communicate(timeout=600) for n in nodes]
    for node, (_, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, err[-3000:]
    (run,) = run_dirs(runs_dir)  # one store for the run, none for the other node's candidate
    printed = [out.split() for out, _ in outs]
    assert sorted(printed, key=len) == [[], [run.name]]  # the run id, printed by rank 0 only
    meta = json.loads((run / "meta.json").read_text())
    assert (meta["status"], meta["world_size"]) == ("completed", 2)
    assert_same_training(run, one_node(zero))


def test_a_rendezvous_that_never_completes_fails_in_time(runs_dir: Path) -> None:
    """Node 1 never starts: node 0 gives up after trainer.rdzv_timeout with one line naming
    the rendezvous and the key, and leaves no run behind."""
    start = time.monotonic()
    node = start_node(runs_dir, free_port(), "trainer.rdzv_timeout=5")
    _, err = node.communicate(timeout=300)
    assert node.returncode == 1, err[-3000:]
    # the 5 s timeout applied, not the 600 s default (the bound leaves start-up any time)
    assert time.monotonic() - start < 300
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rendezvous at 127.0.0.1:") and \
        "not all trainer.nodes=2 nodes joined within trainer.rdzv_timeout=5 s" in last, err
    assert "Traceback" not in err
    assert not runs_dir.exists() or not run_dirs(runs_dir)


def wait_for_steps(run: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.time() + 300
    metrics = run / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().count("\n") >= n):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no steps recorded"
        time.sleep(0.1)


def test_sigterm_to_the_launcher_stops_every_rank_at_one_step_and_resumes(
        runs_dir: Path, one_node) -> None:  # noqa: ANN001 - the fixture's runner
    """What SLURM does on preemption: SIGTERM to the launching `grpo run trainer.gpus=2` and
    to every process of the job (so each rank gets several copies: one request). Both ranks
    finish the step, one checkpoint (both ranks' shards) is written, the run is
    `interrupted`, and `resume=` ends with the metrics of the uninterrupted run."""
    gate = Gate(runs_dir.parent, at=2)  # every rank held while step 1 scores its batch
    proc = start_grpo(runs_dir, "run", *RUN, "trainer.zero_stage=2", "trainer.gpus=2",
                      "trainer.steps=500", "run_id=pre", gate.reward, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, env=ONE_THREAD)
    run = runs_dir / "pre"
    gate.wait(proc)
    job = descendants(proc.pid)
    assert len(job) >= 3  # torchrun's agent and the two ranks
    for pid in [proc.pid, *job]:
        os.kill(pid, signal.SIGTERM)
    gate.open()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert err.count("grpo: SIGTERM: finishing the current step, saving a checkpoint") == 1
    meta = json.loads((run / "meta.json").read_text())
    done = [m["step"] for m in read_metrics(run)]
    assert meta["status"] == "interrupted" and done == [0, 1]  # step 1 finished, no later
    (ckpt,) = (run / "checkpoints").glob("step-*")  # written once, at the last finished step
    assert ckpt.name == f"step-{done[-1]:06d}" and (ckpt / "complete.json").is_file()
    shards = sorted(p.name for p in ckpt.glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # ZeRO-2: each rank saved its optimiser shard
    assert "Continue with: grpo run resume=pre" in err

    res = run_grpo(runs_dir, "run", "resume=pre", f"trainer.steps={STEPS}", env=ONE_THREAD)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "meta.json").read_text())["status"] == "completed"
    assert_same_training(run, one_node(2))


def descendants(root: int) -> list[int]:
    """Every process under ``root`` (the agent, the ranks)."""
    parents = process_parents()

    def under(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    return [p for p in parents if under(p)]


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of the process of global rank ``rank`` under the ``launcher`` process."""
    for pid in descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"GROUP_RANK=0" in env:  # a rank, not the agent
            return pid
    raise AssertionError(f"no process of rank {rank} under {launcher}")


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_rank_fails_the_whole_run_in_bounded_time(runs_dir: Path, victim: int) -> None:
    """kill -9 of one rank (rank 0 writes the store; rank 1 does not): every rank stops, the
    launcher ends with one line naming the rank, and the run is `failed` with that line."""
    proc = start_grpo(runs_dir, "run", *RUN, "trainer.gpus=2", "trainer.steps=500",
                      "run_id=kill", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      env=ONE_THREAD)
    wait_for_steps(runs_dir / "kill", 1, proc)
    pid = rank_pid(proc.pid, victim)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert time.monotonic() - killed < 90  # the others stop at once or at the agent's SIGKILL
    assert proc.returncode == 1, err[-3000:]
    line = (f"rank {victim} (pid {pid}) was killed by SIGKILL; rank {1 - victim} stopped with "
            "it; the run is failed")
    assert err.strip().splitlines()[-1] == f"error: {line}", err[-3000:]
    meta = json.loads((runs_dir / "kill" / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["error"] == line
