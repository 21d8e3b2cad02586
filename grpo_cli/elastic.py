"""torchrun as `grpo run` starts it: ``python -m grpo_cli.elastic <torchrun arguments>``.

It is torchrun's own agent (``torch.distributed.run``), with two things changed:

- Signals. torchrun answers SIGTERM by giving the ranks 30 s before SIGKILL, and a second copy
  of the signal (SLURM signals every process of a job; a parent passes it on as well) breaks
  off even that. Here the signal goes to every rank of this node, once, and the ranks take as
  long as the step and its checkpoint need (they stop at the same step, see train/stop.py).
- Failures. A rank that dies makes torchrun stop the others and print pages of tracebacks;
  a rendezvous that cannot complete, one more. Here each ends in one line that names the rank
  (or the rendezvous and the key to change), also written to ``$GRPO_FAILURE_FILE`` so that
  the launching ``grpo run`` can record it in the run's meta.json.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FAILURE_FILE_ENV = "GRPO_FAILURE_FILE"
FORWARDED = (signal.SIGTERM, signal.SIGINT)
# What a rank, and so the launcher, exits with after a signal asked it to stop and it did
# (cli.py: 128 + SIGINT / SIGTERM).
STOPPED_EXITS = (128 + signal.SIGINT, 128 + signal.SIGTERM)
# ... and how torchrun reports such a rank (also when the signal itself ended it).
STOPPED_CODES = {*STOPPED_EXITS, -signal.SIGINT, -signal.SIGTERM}


def process_parents() -> dict[int, int]:
    """{pid: parent pid} of every process, from /proc."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def child_pids(parent: int) -> list[int]:
    """The processes ``parent`` started (torchrun's agent starts each rank as its child)."""
    return [pid for pid, ppid in process_parents().items() if ppid == parent]


class Forward:
    """Signal handler: pass the signal to every rank of this node, remember it."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum
        for pid in child_pids(os.getpid()):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def describe_failure(failures: dict[int, Any]) -> tuple[str, int]:
    """One line (and an exit code) for torchrun's ``{global rank: ProcessFailure}``: the rank
    that failed on its own, not one torchrun stopped because of it (SIGTERM, or the exit code
    a rank stops with). Among those, one killed by a signal (SIGKILL, SIGABRT) if any, else
    the first. Timestamps are whole seconds, so a rank that aborted and the rank SIGTERMed
    for it usually tie."""
    def order(item: tuple[int, Any]) -> tuple[int, int, int, int]:
        rank, f = item
        stopped = 1 if f.exitcode in STOPPED_CODES else 0
        return (stopped, 0 if f.exitcode < 0 else 1, int(f.timestamp), rank)

    rank, f = min(failures.items(), key=order)
    if f.exitcode < 0:
        how = f"was killed by {signal.Signals(-f.exitcode).name}"
        code = 1
    else:
        how = f"exited with code {f.exitcode}"
        code = f.exitcode
    others = sorted(r for r in failures if r != rank)
    tail = f"; rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} stopped " \
        "with it" if others else ""
    return f"rank {rank} (pid {f.pid}) {how}{tail}; the run is failed", code


def rendezvous_message(args: Any, error: BaseException) -> str:
    conf = dict(kv.split("=", 1) for kv in (args.rdzv_conf or "").split(",") if "=" in kv)
    wait = conf.get("join_timeout", "600")
    if type(error).__name__ == "RendezvousTimeoutError":
        return (f"rendezvous at {args.rdzv_endpoint}: not all trainer.nodes={args.nnodes} "
                f"nodes joined within trainer.rdzv_timeout={wait} s; start the same grpo run "
                "command on every node (the same trainer.master_addr and master_port), or "
                "raise trainer.rdzv_timeout")
    return (f"rendezvous at {args.rdzv_endpoint} (trainer.master_addr:trainer.master_port) "
            f"failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}")


def known_options(argv: list[str]) -> list[str]:
    """``argv`` without the ``--name=value`` options this torch's torchrun does not have.

    ``--shutdown_timeout`` (how long the other ranks get after one fails) is newer than
    torch 2.11, which GPU images still ship; there torchrun's own 30 s apply. Everything after
    the first non-option (the module and its arguments) is passed as it is."""
    from torch.distributed.run import get_args_parser

    have = get_args_parser()._option_string_actions
    out: list[str] = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            return out + argv[i:]
        if arg.split("=", 1)[0] in have:
            out.append(arg)
    return out


def report(line: str) -> None:
    print(f"error: {line}", file=sys.stderr, flush=True)
    if path := os.environ.get(FAILURE_FILE_ENV):
        Path(path).write_text(line + "\n")


def quiet_torchrun_logs() -> None:
    """torchrun's warnings and errors, each logger set to its own level at import; the lines
    a user needs are printed by ``report``."""
    for name, logger in logging.root.manager.loggerDict.items():
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.CRITICAL)


def main(argv: Sequence[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    args = parse_args(known_options(list(argv)))
    # torchrun handles only what we do not: SIGTERM and SIGINT stay with Forward.
    args.signals_to_handle = "SIGHUP,SIGQUIT"
    forward = Forward()
    for s in FORWARDED:
        signal.signal(s, forward)
    quiet_torchrun_logs()
    try:
        run(args)
    except ChildFailedError as e:
        if forward.signum is not None and all(f.exitcode in STOPPED_CODES
                                              for f in e.failures.values()):
            return 128 + forward.signum  # stopped as asked; rank 0 said how to resume
        line, code = describe_failure(e.failures)
        report(line)
        return code
    except RendezvousError as e:
        report(rendezvous_message(args, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
