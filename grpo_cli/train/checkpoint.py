"""Resumable checkpoints: DeepSpeed's engine state (ZeRO shards, optimiser, scheduler) plus
what the loop needs to continue exactly where it stopped: the step, the prompt sampler's
position and every RNG state.

A checkpoint counts only once ``complete.json`` exists in its tag directory. It is written
last (atomically, by rank 0, after every rank has written its shard), so a process killed
during a save leaves a directory that :func:`last_complete_step` ignores.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_cli.telemetry.store import atomic_write_text

COMPLETE = "complete.json"
_TAG_RE = re.compile(r"^step-(\d{6,})$")


def tag(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain lists/tensors (loadable with
    ``torch.load(weights_only=True)``: no pickled numpy objects)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [str(kind), keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def save(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any],
         is_main: bool) -> Path:
    """Every rank writes its shard; then rank 0 marks the checkpoint complete."""
    engine.save_checkpoint(str(ckpt_dir), tag=tag(step),
                           client_state={**client_state, "step": step, "rng": rng_state()})
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
    """Restore engine, optimiser and scheduler state and the RNGs; returns the client state
    (``sampler``, ``step``)."""
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag(step),
                                          load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag(step)}")
    set_rng_state(client["rng"])
    return client
