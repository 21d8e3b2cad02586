"""Start the ranks of a multi-GPU or multi-node run through an existing launcher.

`grpo run trainer.gpus=8` re-runs the same command under ``torchrun`` (one node, or every node
joining a c10d rendezvous at ``trainer.master_addr``) or under DeepSpeed's ``deepspeed``
launcher (``trainer.hostfile``: one command on the head node starts every node over ssh).
Each rank sees ``RANK`` in its environment, so it trains instead of launching again. No
scheduling of our own: the launchers place the ranks, the DeepSpeed engine does the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from grpo_cli.config.schema import TrainerConfig
from grpo_cli.errors import ConfigError

LAUNCHERS = ("torchrun", "deepspeed")


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


def launch_command(t: TrainerConfig, args: Sequence[str], run_id: str) -> list[str]:
    """The command that starts every rank of ``grpo run ARGS`` (one node's share for
    torchrun with several nodes: the same command runs on each node). ``run_id`` is fixed
    here so that every node, and a relaunch after preemption, writes the same run."""
    check(t)
    pinned = any(a.startswith(("run_id=", "resume=")) for a in args)
    child = ["-m", "grpo_cli", "run", *args, *([] if pinned else [f"run_id={run_id}"])]
    if t.launcher == "deepspeed":  # the `deepspeed` script, from this interpreter's install
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", f"--num_gpus={t.gpus}",
               f"--master_port={t.master_port}"]
        if t.hostfile is not None:
            cmd += [f"--hostfile={t.hostfile}", f"--num_nodes={t.nodes}"]
        if t.master_addr:
            cmd.append(f"--master_addr={t.master_addr}")
        # --module runs `python -u -m grpo_cli run ...` in every rank.
        return [*cmd, "--module", *child[1:]]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={t.gpus}"]
    if t.nodes == 1:
        cmd += ["--standalone"] if not t.master_addr else \
            [f"--master_addr={t.master_addr}", f"--master_port={t.master_port}"]
    else:  # every node runs this; the c10d rendezvous assigns node ranks
        cmd += [f"--nnodes={t.nodes}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={t.master_addr}:{t.master_port}", f"--rdzv_id={run_id}"]
    return [*cmd, *child]


def run_launcher(cmd: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run the launcher in the foreground; SIGTERM / Ctrl-C are passed on, so the ranks stop
    the way a single process would (finish the step, checkpoint if asked, exit 143 / 130)."""
    proc = subprocess.Popen(cmd, env=dict(env) if env is not None else None)

    def forward(signum: int, frame: object) -> None:
        proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
