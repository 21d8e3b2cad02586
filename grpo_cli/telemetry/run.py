"""The run's recording side: store + sinks on rank 0, nothing on the other ranks.

The loop calls the same methods on every rank; only rank 0's handle writes, so the loop has no
``if rank == 0`` branches.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from grpo_cli.config.schema import RunConfig
from grpo_cli.telemetry.sinks import MetricsSink, MultiSink, NoopSink, StoreSink, WandbSink
from grpo_cli.telemetry.store import (
    RunStore,
    new_run_id,
    read_metrics,
    resolve_run_dir,
    runs_root,
)
from grpo_cli.train.engine import Dist, all_gather_objects

_PACKAGES = ("grpo-cli", "torch", "transformers", "deepspeed", "hydra-core", "wandb", "vllm")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


@dataclass
class RunHandle:
    run_id: str
    run_dir: Path
    store: RunStore | None = None  # rank 0 only
    sink: MetricsSink = field(default_factory=NoopSink)
    show_progress: bool = False
    progress_bar: bool = False  # a redrawn bar; plain lines otherwise (see ``progress``)
    # a run of its own (not a sweep arm, whose sweep says it): end with the next command
    suggest_report: bool = False
    _last: dict[str, float] = field(default_factory=dict)
    _closed: bool = False

    def note(self, **fields: Any) -> None:
        """Facts about the run worth keeping in meta.json (e.g. dropped prompts)."""
        if self.store is not None:
            self.store.update_meta(**fields)

    def announce(self, **fields: str) -> None:
        """A choice the run made for the user (e.g. engine settings): printed once, on rank
        0, and kept in meta.json."""
        if self.store is not None:
            for text in fields.values():
                print(f"grpo: {text}", file=sys.stderr)
        self.note(**fields)

    def progress(self, steps: range) -> Iterator[int]:
        """Iterate the steps still to run (past 0 when resumed); rank 0 shows the position
        out of ``steps.stop`` with the latest headline metrics: a bar on a terminal, else (a
        log file, a pipe, a sweep arm beside other arms) plain lines prefixed with the run id,
        so that interleaved arms stay readable."""
        if not self.show_progress:
            yield from steps
        elif self.progress_bar:
            yield from self._bar(steps)
        else:
            yield from self._lines(steps)

    def _headline(self) -> str:
        m = self._last
        return (f"len {m.get('length/mean', math.nan):.1f} "
                f"clip {m.get('length/clip_ratio', math.nan):.2f} "
                f"reward {m.get('reward/mean', math.nan):.2f} "
                f"{m.get('perf/step_s', math.nan):.2f} s/step")

    def _bar(self, steps: range) -> Iterator[int]:
        from tqdm import tqdm

        bar = tqdm(desc=f"grpo {self.run_id}", unit="step", dynamic_ncols=True,
                   initial=steps.start, total=steps.stop)
        try:
            for step in steps:
                yield step
                bar.set_postfix_str(self._headline(), refresh=False)
                bar.update()
        finally:
            bar.close()

    def _lines(self, steps: range, every_s: float = 30.0) -> Iterator[int]:
        """A line after the first step, the last, every 5% of the run and at least every
        ``every_s`` seconds."""
        total = steps.stop
        if steps.start > 0:
            self._say(f"resumed at step {steps.start}/{total}")
        every = max(1, total // 20)
        said = time.monotonic()
        for step in steps:
            yield step
            done, now = step + 1, time.monotonic()
            if step == steps.start or done == total or done % every == 0 or now - said >= every_s:
                self._say(f"step {done}/{total} {self._headline()}")
                said = now

    def _say(self, text: str) -> None:
        print(f"grpo {self.run_id} {text}", file=sys.stderr, flush=True)

    def log(
        self,
        step: int,
        metrics: dict[str, float],
        histograms: dict[str, tuple[np.ndarray, np.ndarray]],
        rollouts: dict[str, np.ndarray],
        samples: list[dict] | None,
    ) -> None:
        self._last = metrics
        if self.store is not None:
            self.store.add_rollouts(rollouts)
        self.sink.log(step, metrics, histograms, samples)

    def save_checkpoint(self, engine: Any, step: int, client_state: dict[str, Any]) -> None:
        """Every rank writes its ZeRO shard. The store is flushed first, so a complete
        checkpoint of step k always has every record of steps <= k next to it."""
        from grpo_cli.train import checkpoint

        if self.store is not None:
            self.store.flush_rollouts()
        checkpoint.save(engine, self.run_dir / "checkpoints", step, client_state,
                        is_main=self.store is not None)
        if self.store is not None:
            self.store.update_meta(last_checkpoint_step=step)

    def rewind_to(self, step: int) -> None:
        """Resuming from step ``step``'s checkpoint: drop the records of later steps."""
        if self.store is not None:
            self.store.truncate_after(step)
            self.store.update_meta(resumed_from_step=step)

    def close(self, status: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.store is not None:
            self.store.flush_rollouts()
            self.store.update_meta(status=status, end_time=time.time())
        self.sink.close(status)
        if self.show_progress:
            print(f"run {self.run_id} {status}: {self.run_dir}", file=sys.stderr)
            if status == "completed" and self.suggest_report:
                print(f"grpo: next: grpo report {self.run_id}  (figures, length statistics "
                      "and a diagnosis)", file=sys.stderr)


def open_run(cfg: RunConfig, resolved: DictConfig, d: Dist,
             experiment_text: str | None = None) -> RunHandle:
    """Create (or, with ``cfg.resume``, reopen) the run directory and sinks on rank 0; agree
    on the run id across ranks."""
    root = runs_root(cfg.runs_dir)
    # Global rank 0's id: the nodes of a multi-node run each bring their own candidate.
    mine = (cfg.resume or cfg.run_id or new_run_id()) if d.is_main else None
    run_id = all_gather_objects(mine, d.world)[0]
    run_dir = resolve_run_dir(root, run_id)
    if not d.is_main:
        return RunHandle(run_id, run_dir)
    config = OmegaConf.to_container(resolved, resolve=True)
    assert isinstance(config, dict)
    config["run_id"], config["resume"] = run_id, None
    if cfg.resume:
        store = RunStore.open(root, run_id)
        meta = store.read_meta()
        store.update_meta(status="running", resumes=[*meta.get("resumes", []), time.time()],
                          argv_resume=sys.argv[1:])
    else:
        store = RunStore.create(root, run_id)
        store.update_meta(
            run_id=run_id, status="running", sweep_id=cfg.sweep_id, name=cfg.name,
            git_sha=git_sha(), packages=package_versions(), python=platform.python_version(),
            world_size=d.world, start_time=time.time(), argv=sys.argv[1:],
        )
    store.write_config(config)  # on resume: the same config, trainer.steps/logger as now
    if experiment_text is not None:
        (store.path / "experiment.yaml").write_text(experiment_text)
    bar = draws_bar(cfg)  # before W&B starts, which may wrap stderr to record the console
    sinks: list[MetricsSink] = [StoreSink(store)]
    w = cfg.logger.wandb
    if w.mode != "disabled":
        tags = [f"max_len={cfg.data.max_response_length}", cfg.algorithm.loss_agg_mode]
        sinks.append(WandbSink.create(
            run_id=run_id, run_dir=store.path, config=json.loads(json.dumps(config)),
            mode=w.mode, project=w.project, entity=w.entity, group=cfg.sweep_id, tags=tags,
            recorded=read_metrics(store.path) if cfg.resume else (),
        ))  # resume="allow": a resumed run continues the same W&B run id
    return RunHandle(run_id, run_dir, store, MultiSink(sinks), show_progress=cfg.logger.progress,
                     progress_bar=bar, suggest_report=cfg.sweep_id is None)


def draws_bar(cfg: RunConfig) -> bool:
    """A progress bar only where one process owns the terminal: stderr is one, and the run
    is not a sweep arm (parallel arms share it; their bars would overwrite each other)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return cfg.sweep_id is None and isatty is not None and bool(isatty())
