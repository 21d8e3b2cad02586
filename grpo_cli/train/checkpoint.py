"""Resumable checkpoints: DeepSpeed's engine state (ZeRO shards, optimiser, scheduler) plus
what the loop needs to continue exactly where it stopped: the step and the prompt sampler's
position. RNG states are not saved: every random draw of the loop is seeded from (seed,
step, rank), so a resumed run draws what the uninterrupted run drew (the resume tests
compare the two bit for bit).

A checkpoint counts only once ``complete.json`` exists in its tag directory. It is written
last (atomically, by rank 0, after every rank has written its shard), so a process killed
during a save leaves a directory that :func:`last_complete_step` ignores.

Loading never unpickles arbitrary objects: DeepSpeed's own loader calls
``torch.load(weights_only=False)``, so :func:`load` swaps in :class:`SafeCheckpointEngine`,
which loads with ``torch.load(weights_only=True)`` and allows only the few DeepSpeed classes its
checkpoints hold. A checkpoint directory is therefore no more dangerous to resume from than
a safetensors file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from grpo_cli.errors import CheckpointWriteError, UnsafeCheckpoint
from grpo_cli.telemetry.store import atomic_write_text

COMPLETE = "complete.json"


def _deepspeed_safe_globals() -> list[Any]:
    """Classes DeepSpeed pickles into ZeRO 0-3 optimiser states (found by loading real
    checkpoints with ``weights_only=True``); plain data, no code runs when they load. fp16
    optimisers keep their ``DynamicLossScaler`` (the current scale, the overflow counters)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class SafeCheckpointEngine:
    """Wraps DeepSpeed's checkpoint engine: saving is unchanged, loading uses
    ``torch.load(weights_only=True)`` with only DeepSpeed's plain record classes allowed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        import pickle

        try:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            reason = (str(e).splitlines() or [""])[0][:200]
            raise UnsafeCheckpoint(
                f"{path}: refused to load, it holds more than tensors ({reason})") from e
_TAG_RE = re.compile(r"^step-(\d{6,})$")


def tag(step: int) -> str:
    return f"step-{step:06d}"


def save(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any],
         is_main: bool) -> Path:
    """Every rank writes its shard; then rank 0 marks the checkpoint complete.

    A failed write removes the partial directory (it would never be used, and on a full disk
    the space is what the user needs back) and raises :class:`CheckpointWriteError`.
    """
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag(step),
                               client_state={**client_state, "step": step})
    except (OSError, RuntimeError) as e:  # torch reports a short write as a RuntimeError
        import shutil

        if is_main:
            shutil.rmtree(ckpt_dir / tag(step), ignore_errors=True)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        previous = last_complete_step(ckpt_dir)
        after = ("no earlier checkpoint exists" if previous is None else
                 f"after freeing space, resume=<run id> continues from step {previous + 1}")
        raise CheckpointWriteError(
            f"checkpoint {ckpt_dir / tag(step)} could not be written ({reason}); is the disk "
            f"full? The run's records up to step {step} are intact; {after}") from e
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # all shards are on disk before the marker
    path = ckpt_dir / tag(step)
    if is_main:
        atomic_write_text(path / COMPLETE, json.dumps({"step": step}) + "\n")
    return path


def last_complete_step(ckpt_dir: Path) -> int | None:
    """The newest checkpoint with its completion marker, or None."""
    steps = []
    if ckpt_dir.is_dir():
        for child in ckpt_dir.iterdir():
            m = _TAG_RE.match(child.name)
            if m and (child / COMPLETE).is_file():
                steps.append(int(m[1]))
    return max(steps) if steps else None


def load(engine: Any, ckpt_dir: Path, step: int) -> dict[str, Any]:
    """Restore engine, optimiser and scheduler state; returns the client state (``sampler``,
    ``step``). No RNG state: the loop reseeds every draw from (seed, step, rank)."""
    if not isinstance(engine.checkpoint_engine, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine(engine.checkpoint_engine)
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag(step),
                                          load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag(step)}")
    return client
