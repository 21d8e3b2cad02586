"""The user cache (``$GRPO_CACHE_DIR``, default ``~/.cache/grpo-cli``) and building into it
once: a build goes to a temp dir renamed into place, so a reader never loads a half-written
model and a killed build leaves nothing behind; a lock beside the target makes concurrent
callers (parallel sweep arms, ranks) wait for the one build instead of each building."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("GRPO_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "grpo-cli"


def build_once(target: Path, build: Callable[[Path], object],
               done: Callable[[Path], bool]) -> Path:
    """``target`` if ``done(target)``, else ``build(tmp)`` and rename tmp to ``target``."""
    if done(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f".{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        if done(target):  # built by the process that held the lock
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            try:
                tmp.rename(target)
            except OSError:  # a stale or foreign dir is in the way
                if not done(target):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
