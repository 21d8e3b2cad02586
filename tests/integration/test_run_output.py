"""What `grpo run` prints, through the real CLI: its progress and its result, none of its
libraries' noise (DeepSpeed's accelerator warning, W&B's banner and summary, transformers'
weight-loading bar), no C++ op compiled on the way, and the real position of a resumed run.

The runs here use the user's environment, not the tests' usual quiet one: WANDB_SILENT and
DS_ACCELERATOR unset, and an empty TORCH_EXTENSIONS_DIR (what a fresh machine has).
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from grpo_cli.telemetry.wandb_files import read_wandb_history
from tests.helpers import REPO, TINY, cli_env, grpo_cmd, only_run

SHOWN = [*TINY, "logger.progress=true", "max_len=16"]
OP = "deepspeed_shm_comm"  # DeepSpeed's CPU shared-memory all-reduce, a C++ op it JIT-builds


def user_env(runs_dir: Path, extensions: Path, **extra: str) -> dict[str, str]:
    env = cli_env(runs_dir, TORCH_EXTENSIONS_DIR=str(extensions), **extra)
    for key in ("WANDB_SILENT", "WANDB_QUIET", "DS_ACCELERATOR"):
        env.pop(key, None)
    return env


def grpo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(grpo_cmd(*args), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def on_a_terminal(env: dict[str, str], *args: str, timeout: float = 600) -> tuple[str, str]:
    """`grpo ARGS` with stderr on a pseudo-terminal (100 columns), as in a user's shell;
    returns (stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(grpo_cmd(*args), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                raise TimeoutError(f"grpo {' '.join(args)}: no end after {timeout} s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has exited
                break
            if not chunk:
                break
            received += chunk
    finally:
        os.close(master)
    assert proc.stdout is not None
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0, received.decode()[-3000:]
    return stdout, received.decode()


def progress_line(run_id: str, done: int, total: int) -> re.Pattern[str]:
    return re.compile(rf"grpo {re.escape(run_id)} step {done}/{total} len [\d.]+ "
                      rf"clip [\d.]+ reward [\d.]+ [\d.]+ s/step")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """A 2-step run as a user starts it, W&B offline (the default), stdout and stderr
    captured (no terminal)."""
    tmp = tmp_path_factory.mktemp("default-run")
    runs, extensions = tmp / "runs", tmp / "torch_extensions"
    res = grpo(user_env(runs, extensions), "run", *SHOWN, "trainer.steps=2",
               "logger.wandb.mode=offline")
    return res, runs, extensions


def test_a_run_prints_its_progress_and_its_result_and_nothing_else(default_run) -> None:
    res, runs, _ = default_run
    run = only_run(runs)
    assert res.stdout.splitlines() == [run.name]  # the run id only: scripts read it
    printed = res.stdout + res.stderr
    assert "Setting accelerator" not in printed  # DeepSpeed's "no accelerator found" warning
    assert not [line for line in printed.splitlines() if line.startswith("wandb:")]
    assert "Loading weights" not in printed and "\r" not in printed  # no bar off a terminal
    lines = [line for line in res.stderr.splitlines() if not line.startswith("grpo: ")]
    assert len(lines) == 3, res.stderr
    assert progress_line(run.name, 1, 2).fullmatch(lines[0]), lines[0]
    assert progress_line(run.name, 2, 2).fullmatch(lines[1]), lines[1]
    assert lines[2] == f"run {run.name} completed: {run}"
    assert res.stderr.splitlines()[-1].startswith(f"grpo: next: grpo report {run.name}  ")
    # W&B said nothing, and still wrote its offline run (what `wandb sync` uploads).
    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    assert sorted(read_wandb_history(run_file)) == [0, 1]


def test_a_single_rank_compiles_no_cpp_op(default_run) -> None:
    """DeepSpeed's CPU backend JIT-compiles its shared-memory all-reduce into
    TORCH_EXTENSIONS_DIR when its process group starts; training never calls it."""
    res, _, extensions = default_run
    assert not (extensions / OP).exists()
    assert not extensions.exists() or not any(extensions.rglob("*.so"))
    assert "built successfully" not in res.stdout + res.stderr


def test_two_cpu_ranks_compile_no_cpp_op_and_print_progress_once(tmp_path: Path) -> None:
    """Several CPU ranks all-reduce through gloo too: no op built. No rank warns about the
    accelerator or about the torch collectives ZeRO calls, and only rank 0 prints the
    progress and the result."""
    runs, extensions = tmp_path / "runs", tmp_path / "torch_extensions"
    res = grpo(user_env(runs, extensions, OMP_NUM_THREADS="1"), "run", *SHOWN,
               "trainer.gpus=2", "trainer.prompts_per_step=4", "trainer.steps=2",
               "trainer.zero_stage=2", "logger.wandb.mode=disabled")
    run = only_run(runs)
    assert not (extensions / OP).exists()
    assert res.stdout.splitlines() == [run.name]
    lines = [line for line in res.stderr.splitlines()
             if not line.startswith(("grpo: ", "launching: "))]
    assert len(lines) == 3, res.stderr  # nothing from DeepSpeed, torch or the other rank
    assert progress_line(run.name, 1, 2).fullmatch(lines[0]), lines[0]
    assert progress_line(run.name, 2, 2).fullmatch(lines[1]), lines[1]
    assert lines[2] == f"run {run.name} completed: {run}"


def test_a_resumed_run_shows_its_real_position(tmp_path: Path) -> None:
    """Resumed after step 1 of 4 (or step 3 of 6), the progress counts from 2/4 (4/6), not
    from 0 of the steps left: as lines off a terminal, as a bar on one."""
    runs, extensions = tmp_path / "runs", tmp_path / "torch_extensions"
    env = user_env(runs, extensions)
    grpo(env, "run", *TINY, "max_len=16", "trainer.steps=2", "trainer.save_every=2",
         "logger.wandb.mode=disabled", "run_id=r")

    res = grpo(env, "run", "resume=r", "trainer.steps=4", "logger.progress=true")
    lines = [line for line in res.stderr.splitlines() if line.startswith("grpo r ")]
    assert lines[0] == "grpo r resumed at step 2/4", res.stderr
    assert [bool(progress_line("r", n, 4).fullmatch(line)) for n, line in
            zip((3, 4), lines[1:], strict=True)] == [True, True], res.stderr

    # saved at step 3 (save_every=2): on a terminal the bar starts at 4 of 6
    stdout, terminal = on_a_terminal(env, "run", "resume=r", "trainer.steps=6",
                                     "logger.progress=true")
    assert stdout.splitlines() == ["r"]
    frames = [f for f in re.split(r"[\r\n]+", terminal) if f.startswith("grpo r:")]
    assert frames, terminal
    assert re.search(r"\| 4/6 \[", frames[0]), frames[0]
    assert re.search(r"\| 6/6 \[", frames[-1]), frames[-1]
    assert not any(re.search(r"\| \d/2 \[", f) for f in frames), terminal


def test_a_sweep_arm_prints_lines_with_its_run_id_even_on_a_terminal(tmp_path: Path) -> None:
    """Arms share the terminal (joblib runs them side by side): redrawn bars would overwrite
    each other, lines prefixed with the arm's run id stay readable."""
    runs = tmp_path / "runs"
    _, terminal = on_a_terminal(user_env(runs, tmp_path / "torch_extensions"), "sweep",
                                "max_len=16", *SHOWN, "trainer.steps=1",
                                "logger.wandb.mode=disabled")
    (arm,) = [p.name for p in runs.iterdir() if p.name.startswith("sweep-")]
    assert progress_line(arm, 1, 1).search(terminal), terminal
    assert "%|" not in terminal  # no tqdm bar
