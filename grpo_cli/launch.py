"""Start the ranks of a multi-GPU or multi-node run through an existing launcher.

`grpo run trainer.gpus=8` re-runs the same command under ``torchrun`` (one node, or every node
joining a c10d rendezvous at ``trainer.master_addr``) or under DeepSpeed's ``deepspeed``
launcher (``trainer.hostfile``: one command on the head node starts every node over ssh).
Each rank sees ``RANK`` in its environment, so it trains instead of launching again. No
scheduling of our own: the launchers place the ranks, the DeepSpeed engine does the rest.
torchrun runs through grpo_cli/elastic.py, which passes signals to the ranks and reports a
failure in one line.

The nodes of one run agree on its id: every node passes its own candidate ``run_id``, and the
ranks take global rank 0's (telemetry/run.py); the rendezvous id, which must be equal before
any rank exists, comes from a given ``run_id=``/``resume=``, else the scheduler's job id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from grpo_cli.config.schema import TrainerConfig
from grpo_cli.elastic import FAILURE_FILE_ENV, STOPPED_EXITS
from grpo_cli.errors import ConfigError

LAUNCHERS = ("torchrun", "deepspeed")
SHUTDOWN_TIMEOUT_S = 60  # after a rank fails, how long the others get to stop before SIGKILL
# The scheduler's id of the job, the same on every node of it.
JOB_ID_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID")


def free_port() -> int:
    """A free TCP port on loopback, so parallel single-process runs never collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_rank(env: Mapping[str, str]) -> bool:
    """True inside a process a launcher started (torchrun and deepspeed both set RANK)."""
    return "RANK" in env


def needs_launch(t: TrainerConfig, env: Mapping[str, str]) -> bool:
    return not is_rank(env) and (t.gpus * t.nodes > 1 or t.hostfile is not None)


def check(t: TrainerConfig) -> None:
    """Launch settings a launcher would reject later, or silently misread, fail here."""
    if t.launcher not in LAUNCHERS:
        raise ConfigError(f"trainer.launcher={t.launcher}: allowed values are "
                          f"{', '.join(LAUNCHERS)}")
    if t.gpus < 1 or t.nodes < 1:
        raise ConfigError(f"trainer.gpus={t.gpus}, trainer.nodes={t.nodes}: both must be >= 1")
    if t.rdzv_timeout <= 0:
        raise ConfigError(f"trainer.rdzv_timeout={t.rdzv_timeout}: seconds the nodes wait for "
                          "each other; must be > 0")
    if not 0 < t.master_port < 65536:
        raise ConfigError(f"trainer.master_port={t.master_port}: must be a TCP port (1-65535)")
    if t.hostfile is not None:
        if t.launcher != "deepspeed":
            raise ConfigError("trainer.hostfile is read by the deepspeed launcher; set "
                              "trainer.launcher=deepspeed (or use master_addr with torchrun)")
        if not is_rank(os.environ) and not os.path.isfile(t.hostfile):  # head node only
            raise ConfigError(f"trainer.hostfile={t.hostfile}: no such file")
    elif t.nodes > 1 and t.launcher == "torchrun" and not t.master_addr:
        raise ConfigError(f"trainer.nodes={t.nodes} with torchrun needs trainer.master_addr (the "
                          "host every node meets at), or trainer.hostfile with "
                          "trainer.launcher=deepspeed")
    elif t.nodes > 1 and t.launcher == "deepspeed":
        raise ConfigError(f"trainer.nodes={t.nodes} with the deepspeed launcher needs "
                          "trainer.hostfile (the nodes to start)")


def pinned_id(args: Sequence[str]) -> str | None:
    """The run id the user gave (``run_id=`` or ``resume=``), if any."""
    given = [a.split("=", 1)[1] for a in args if a.startswith(("run_id=", "resume="))]
    return given[-1] if given else None


def run_args(args: Sequence[str], run_id: str) -> list[str]:
    """What a started rank gets after ``grpo run``: the user's arguments, and the run id
    unless the user gave one."""
    return [*args, *([] if pinned_id(args) is not None else [f"run_id={run_id}"])]


def rendezvous_id(args: Sequence[str], env: Mapping[str, str]) -> str:
    """The same string on every node of a run, known before any rank starts."""
    if (given := pinned_id(args)) is not None:
        return given
    job = next((env[v] for v in JOB_ID_VARS if env.get(v)), None)
    return f"job-{job}" if job else "grpo"  # one run per endpoint (master_addr:port) at once


def launch_command(t: TrainerConfig, args: Sequence[str], run_id: str,
                   env: Mapping[str, str] | None = None) -> list[str]:
    """The command that starts every rank of ``grpo run ARGS`` (one node's share for
    torchrun with several nodes: the same command runs on each node). ``run_id`` is fixed
    here (unless the user gave one) so that a relaunch after preemption writes the same run;
    with several nodes it is this node's candidate, and global rank 0's wins."""
    check(t)
    env = os.environ if env is None else env
    child = ["-m", "grpo_cli", "run", *run_args(args, run_id)]
    if t.launcher == "deepspeed":  # the `deepspeed` script, from this interpreter's install
        # --no_local_rank: the ranks read LOCAL_RANK from the environment; `grpo run`
        # takes no --local_rank=N argument
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", f"--num_gpus={t.gpus}",
               f"--master_port={t.master_port}", "--no_local_rank"]
        if t.hostfile is not None:
            cmd += [f"--hostfile={t.hostfile}", f"--num_nodes={t.nodes}"]
        if t.master_addr:
            cmd.append(f"--master_addr={t.master_addr}")
        # --module runs `python -u -m grpo_cli run ...` in every rank.
        return [*cmd, "--module", *child[1:]]
    cmd = [sys.executable, "-m", "grpo_cli.elastic", f"--nproc_per_node={t.gpus}",
           f"--shutdown_timeout={SHUTDOWN_TIMEOUT_S}"]
    if t.nodes == 1:
        cmd += ["--standalone"] if not t.master_addr else \
            [f"--master_addr={t.master_addr}", f"--master_port={t.master_port}"]
    else:  # every node runs this; the c10d rendezvous assigns node ranks
        cmd += [f"--nnodes={t.nodes}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={t.master_addr}:{t.master_port}",
                f"--rdzv_id={rendezvous_id(args, env)}",
                f"--rdzv_conf=join_timeout={t.rdzv_timeout},read_timeout={t.rdzv_timeout}"]
    return [*cmd, *child]


def die_with_parent() -> None:
    """In the child, before it runs: the kernel sends it SIGKILL when this process dies (kill
    -9 of ``grpo run`` must not leave a trainer running with no one to report on it)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def run_launcher(cmd: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run the launcher in the foreground; SIGTERM / Ctrl-C are passed on, so the ranks stop
    the way a single process would (finish the step, checkpoint if asked, exit 143 / 130).
    SIGUSR2, the warning SLURM sends before a time limit or preemption when asked to
    (submitit asks for it), is passed on as SIGTERM: the ranks save before the kill."""
    proc = subprocess.Popen(cmd, env=dict(env) if env is not None else None,
                            preexec_fn=die_with_parent)

    def forward(signum: int, frame: object) -> None:
        proc.send_signal(signal.SIGTERM if signum == signal.SIGUSR2 else signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT,
                                                       signal.SIGUSR2)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def start_ranks(cmd: list[str], run_dir: Path) -> tuple[int, str]:
    """Run the launcher; the exit code and, if the ranks failed (not stopped by a signal),
    the launcher's one-line reason, which the run's meta.json then holds with status
    ``failed``: a rank killed outright (SIGKILL, the OOM killer) never wrote its status, and
    rank 0 may be that rank."""
    with tempfile.TemporaryDirectory(prefix="grpo-launch-") as tmp:
        failure = Path(tmp) / "failure.txt"
        code = run_launcher(cmd, {**os.environ, FAILURE_FILE_ENV: str(failure)})
        reason = failure.read_text().strip() if failure.is_file() else ""
    if code == 0 or code in STOPPED_EXITS:
        return code, ""
    reason = reason or f"the ranks exited with code {code}"
    record_failure(run_dir, reason)
    return code, reason


def train_in_child(args: Sequence[str], run_id: str, run_dir: Path, debug: bool) -> int:
    """``grpo run ARGS`` with one rank: the trainer runs in a child process and this one
    waits for it, so a trainer the kernel kills (its out-of-memory killer sends SIGKILL, which
    no process can catch) is still recorded: meta.json says ``failed`` and why, where it would
    otherwise say ``running`` forever. Returns the exit code (128 + signal when killed)."""
    cmd = [sys.executable, "-m", "grpo_cli", "run", *(["--debug"] if debug else []),
           *run_args(args, run_id)]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    code = run_launcher(cmd, env)
    if code >= 0:  # it ended by itself (and said why) or was stopped by a forwarded signal
        return code
    reason = killed_message(-code)
    print(f"error: {reason}", file=sys.stderr, flush=True)
    record_failure(run_dir, reason)
    return 128 - code


def killed_message(signum: int) -> str:
    name = signal.Signals(signum).name
    why = (" (what the kernel's out-of-memory killer sends when host memory runs out: lower "
           "trainer.micro_batch_size or rollout.micro_batch_size)"
           if signum == signal.SIGKILL else "")
    return f"the trainer was killed by {name}{why}; the run is failed"


def record_failure(run_dir: Path, reason: str) -> None:
    """Mark a run that the ranks left ``running`` as ``failed``, keeping ``reason``. Nothing to
    do where this node's candidate id is not the run's (another node's rank 0 won)."""
    import time

    from grpo_cli.telemetry.store import RunStore

    if not (run_dir / "meta.json").is_file():
        return
    store = RunStore(run_dir)
    meta = store.read_meta()
    if meta.get("status") not in ("running", "failed") or meta.get("error"):
        return
    store.update_meta(status="failed", error=reason, end_time=meta.get("end_time", time.time()))
