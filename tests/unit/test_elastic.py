"""grpo_cli/elastic.py: the one line a failed multi-rank run ends with, the ranks a signal is
passed to, and the launching process's record of the failure in meta.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError
from torch.distributed.run import parse_args

from grpo_cli.elastic import Forward, child_pids, describe_failure, rendezvous_message
from grpo_cli.launch import record_failure


def failure(local_rank: int, exitcode: int) -> ProcessFailure:
    return ProcessFailure(local_rank=local_rank, pid=1000 + local_rank, exitcode=exitcode,
                          error_file="<N/A>")


def test_the_rank_killed_by_a_signal_is_named_not_the_ranks_stopped_with_it() -> None:
    # rank 1 was SIGKILLed; rank 0 then lost its peer (exit 1) and rank 2 was stopped (143)
    line, code = describe_failure({0: failure(0, 1), 1: failure(1, -9), 2: failure(2, 143)})
    assert line == ("rank 1 (pid 1001) was killed by SIGKILL; ranks 0, 2 stopped with it; "
                    "the run is failed")
    assert code == 1


def test_a_rank_that_aborted_is_named_not_the_rank_torchrun_sigtermed_for_it() -> None:
    # rank 1 aborted ("terminate called ..."); torchrun then SIGTERMed rank 0 in the same
    # second: the tie on the timestamp must not name rank 0
    line, code = describe_failure({0: failure(0, -signal.SIGTERM),
                                   1: failure(1, -signal.SIGABRT)})
    assert line == ("rank 1 (pid 1001) was killed by SIGABRT; rank 0 stopped with it; "
                    "the run is failed")
    assert code == 1


def test_a_rank_that_exited_with_an_error_keeps_its_code() -> None:
    line, code = describe_failure({3: failure(1, 2)})
    assert line == "rank 3 (pid 1001) exited with code 2; the run is failed"
    assert code == 2


def test_a_rendezvous_timeout_names_the_keys_to_change() -> None:
    args = parse_args(["--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:29611",
                       "--rdzv_conf=join_timeout=7,read_timeout=7", "-m", "grpo_cli"])
    line = rendezvous_message(args, RendezvousTimeoutError("x"))
    assert line.startswith("rendezvous at 127.0.0.1:29611: not all trainer.nodes=2 nodes "
                           "joined within trainer.rdzv_timeout=7 s")


def test_a_signal_is_passed_to_every_child_process() -> None:
    """Forward finds this process's children through /proc and signals each of them."""
    code = "import signal, time; signal.signal(signal.SIGTERM, lambda *a: exit(7)); " \
        "print('ready', flush=True); time.sleep(60)"
    kids = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    for k in kids:
        assert k.stdout is not None and k.stdout.readline() == "ready\n"
    assert {k.pid for k in kids} <= set(child_pids(os.getpid()))
    forward = Forward()
    forward(signal.SIGTERM, None)
    assert [k.wait(timeout=30) for k in kids] == [7, 7]
    assert forward.signum == signal.SIGTERM


def write_meta(run_dir: Path, **meta: object) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "meta.json").write_text(json.dumps(meta))


def read_meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def test_a_run_left_running_by_a_killed_rank_is_marked_failed(tmp_path: Path) -> None:
    write_meta(tmp_path / "r", status="running", start_time=time.time())
    record_failure(tmp_path / "r", "rank 0 (pid 1) was killed by SIGKILL")
    meta = read_meta(tmp_path / "r")
    assert (meta["status"], meta["error"]) == ("failed", "rank 0 (pid 1) was killed by SIGKILL")
    assert meta["end_time"] >= meta["start_time"]


def test_a_finished_run_or_another_nodes_candidate_is_left_alone(tmp_path: Path) -> None:
    write_meta(tmp_path / "done", status="completed")
    record_failure(tmp_path / "done", "late")
    assert read_meta(tmp_path / "done") == {"status": "completed"}
    record_failure(tmp_path / "never-created", "x")  # another node's rank 0 owns the run
    assert not (tmp_path / "never-created").exists()


def test_options_this_torchrun_lacks_are_dropped_and_the_command_kept() -> None:
    """torch 2.11's torchrun has no --shutdown_timeout (GPU images ship it): options the
    installed torchrun does not know are left out; the module and its arguments, which
    follow the first non-option, stay whole."""
    from grpo_cli.elastic import known_options

    argv = ["--nproc_per_node=2", "--shutdown_timeout=60", "--not_in_any_torchrun=1",
            "--standalone", "-m", "grpo_cli", "run", "--debug", "trainer.gpus=2"]
    from torch.distributed.run import get_args_parser

    kept = known_options(argv)
    assert "--not_in_any_torchrun=1" not in kept
    assert kept[-5:] == ["-m", "grpo_cli", "run", "--debug", "trainer.gpus=2"]
    has_timeout = "--shutdown_timeout" in get_args_parser()._option_string_actions
    assert kept[:-5] == ["--nproc_per_node=2", *(["--shutdown_timeout=60"] if has_timeout
                                                 else []), "--standalone"]
