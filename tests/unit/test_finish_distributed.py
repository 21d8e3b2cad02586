"""train/engine.py ``finish_distributed``: the ranks of a multi-rank run end together, after
rank 0 has closed the run store, with the process group taken down (an early rank's exit
used to abort it now and then, and torchrun then stopped rank 0 mid-write)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from grpo_cli.train.engine import Dist, finish_distributed, free_port, init_distributed


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    if rank == 0:
        time.sleep(2.0)  # rank 0 still writing the run store
        Path(out, "rank0_closed").write_text(repr(time.time()))
    finish_distributed(Dist(rank, 2, rank, torch.device("cpu")))
    Path(out, f"rank{rank}_done").write_text(repr((time.time(), dist.is_initialized())))


def test_ranks_end_together_after_rank_0_and_leave_no_process_group(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    closed = float((tmp_path / "rank0_closed").read_text())
    for rank in (0, 1):
        done, initialized = eval((tmp_path / f"rank{rank}_done").read_text())
        assert done >= closed, f"rank {rank} finished before rank 0 closed the run"
        assert initialized is False


def test_one_rank_keeps_its_group_for_the_next_in_process_run() -> None:
    d = init_distributed()  # what an in-process run (a sweep arm, a test) starts with
    finish_distributed(d)
    assert dist.is_initialized()
