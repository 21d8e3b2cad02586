"""`grpo ls`: the runs and sweeps under a runs root, newest first, as a plain text table.

Only reads the store (meta.json, config.yaml, metrics.jsonl, sweep manifests); a directory a
killed or foreign writer left half-made is listed with status ``?`` and a note, never an
error. Sweep arms are listed under their sweep, indented, not among the top-level rows.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from grpo_cli.errors import ConfigError
from grpo_cli.telemetry.headline import final_means
from grpo_cli.telemetry.store import RUNS_ENV, read_metrics, runs_root

Show = Literal["all", "runs", "sweeps"]
E = TypeVar("E", bound="RunEntry | SweepEntry")
UNKNOWN = "?"
# Folders under the root that are not runs.
_NOT_RUNS = frozenset({"sweeps", "reports"})
COLUMNS = ("id", "name", "status", "steps", "model", "data", "cap", "len", "clip", "reward")
FOOTER = ("len, clip, reward: means over the last 10% of each run's steps; "
          "model, data: model.path, data.train_files (file names); "
          "cap: data.max_response_length")


@dataclass
class RunEntry:
    """One run directory as far as it could be read."""

    run_id: str
    name: str | None = None
    status: str = UNKNOWN
    steps_done: int | None = None
    steps_planned: int | None = None
    cap: int | None = None
    model: str | None = None  # model.path, shortened (see ``_short``)
    data: str | None = None  # data.train_files, shortened
    final: dict[str, float | None] = field(default_factory=dict)
    sweep_id: str | None = None
    started: float = 0.0
    problems: list[str] = field(default_factory=list)
    retried: bool = False  # an arm's earlier attempt, replaced by a later run


@dataclass
class SweepEntry:
    """One sweep (``sweeps/<id>/manifest.json``) and the run directories of its arms."""

    sweep_id: str
    name: str | None = None
    status: str = UNKNOWN
    completed: int | None = None
    total: int | None = None
    started: float = 0.0
    arms: list[RunEntry] = field(default_factory=list)
    current: set[str] = field(default_factory=set)  # each arm's latest run id
    problems: list[str] = field(default_factory=list)


@dataclass
class Listing:
    root: Path
    runs: list[RunEntry]  # not part of a listed sweep, newest first
    sweeps: list[SweepEntry]  # newest first

    def all_runs(self) -> list[RunEntry]:
        """Every run, sweep arms included, newest first."""
        return newest_first(self.runs + [a for s in self.sweeps for a in s.arms])


# --- reading ------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return str(value) if value is not None and str(value) != "" else None


def _short(spec: Any) -> str | None:
    """A model or data spec as listed: the embedded ``toy``/``toy:add`` and hub ids as they
    are, a file or directory by its name (runs on one's own data must not look like toy
    runs, and full paths would not fit)."""
    text = _text(spec)
    if text is None or text.startswith("toy") or not text.startswith(("/", ".", "~", "pkg:")):
        return text
    return text.rstrip("/").rsplit("/", 1)[-1]


def read_run(path: Path) -> RunEntry:
    """What ``path`` records about its run; unreadable parts become ``problems``."""
    entry = RunEntry(path.name, started=_mtime(path))
    meta: dict[str, Any] = {}
    try:
        meta = _read_json(path / "meta.json")
    except FileNotFoundError:
        entry.problems.append("no meta.json")
    except (OSError, ValueError) as e:
        entry.problems.append(f"meta.json unreadable ({type(e).__name__})")
    if isinstance(meta.get("status"), str):
        entry.status = meta["status"]
    entry.name = _text(meta.get("name"))
    entry.sweep_id = _text(meta.get("sweep_id"))
    entry.started = _number(meta.get("start_time")) or entry.started
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            loaded = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError, yaml.YAMLError) as e:
            entry.problems.append(f"config.yaml unreadable ({type(e).__name__})")
    trainer, data, model = config.get("trainer"), config.get("data"), config.get("model")
    entry.steps_planned = _int(trainer.get("steps")) if isinstance(trainer, dict) else None
    entry.cap = _int(data.get("max_response_length")) if isinstance(data, dict) else None
    entry.data = _short(data.get("train_files")) if isinstance(data, dict) else None
    entry.model = _short(model.get("path")) if isinstance(model, dict) else None
    entry.name = entry.name or _text(config.get("name"))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics = read_metrics(path)
    except OSError as e:
        entry.problems.append(f"metrics.jsonl unreadable ({type(e).__name__})")
        return entry
    if caught:
        entry.problems.append(f"{len(caught)} unreadable metrics.jsonl line(s) skipped")
    entry.steps_done = len(metrics)
    entry.final = final_means(metrics)
    return entry


def read_sweep(sweep_dir: Path) -> SweepEntry:
    """A sweep's status and arm counts from its manifest and ``arms/<index>.json`` files."""
    from grpo_cli.sweep import arm_status, read_manifest

    entry = SweepEntry(sweep_dir.name)  # started: see collect() when the manifest lacks it
    try:
        manifest = read_manifest(sweep_dir)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except ConfigError:
        entry.problems.append("no manifest.json")
        return entry
    except (OSError, ValueError) as e:
        entry.problems.append(f"manifest.json unreadable ({type(e).__name__})")
        return entry
    if isinstance(manifest.get("status"), str):
        entry.status = manifest["status"]
    entry.started = _number(manifest.get("start_time")) or 0.0
    common = manifest.get("common_overrides")
    names = [o.split("=", 1)[1] for o in common if isinstance(o, str)
             and o.startswith("name=")] if isinstance(common, list) else []
    entry.name = _text(manifest.get("name")) or (names[-1] if names else None)
    arms = manifest.get("arms")
    if not isinstance(arms, list):
        entry.problems.append("manifest.json has no arms list")
        return entry
    completed = 0
    for arm in arms:
        record = arm if isinstance(arm, dict) else {}
        index = _int(record.get("index"))
        if index is not None:
            try:
                record = {**record, **arm_status(sweep_dir, index)}
            except (OSError, ValueError, TypeError):
                pass  # the manifest's own record of the arm stands
        completed += record.get("status") == "completed"
        if isinstance(record.get("run_id"), str):
            entry.current.add(record["run_id"])
    entry.total, entry.completed = len(arms), completed
    return entry


def _age(entry: RunEntry | SweepEntry) -> tuple[float, str]:
    """Sort key: start time (meta/manifest, else the file's mtime), then the id."""
    return entry.started, entry.run_id if isinstance(entry, RunEntry) else entry.sweep_id


def newest_first(entries: Sequence[E]) -> list[E]:
    """Latest start first."""
    return sorted(entries, key=_age, reverse=True)


def collect(root: Path) -> Listing:
    """Read every run directory and sweep under ``root`` (which must exist)."""
    sweeps: dict[str, SweepEntry] = {}
    sweeps_dir = root / "sweeps"
    if sweeps_dir.is_dir():
        for path in sorted(sweeps_dir.iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                sweeps[path.name] = read_sweep(path)
    runs: list[RunEntry] = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith(".") or path.name in _NOT_RUNS:
            continue
        run = read_run(path)
        owner = run.sweep_id if run.sweep_id in sweeps else next(
            (s for s in sweeps if run.run_id.startswith(f"{s}-")), None)
        if owner is None:
            runs.append(run)
        else:
            sweeps[owner].arms.append(run)  # arm order: the ids, index then retry
            run.retried = bool(sweeps[owner].current) and run.run_id not in sweeps[owner].current
    for sweep in sweeps.values():  # no start time in the manifest: its first arm's, else mtime
        sweep.started = sweep.started or min((a.started for a in sweep.arms), default=0.0) \
            or _mtime(sweeps_dir / sweep.sweep_id / "manifest.json")
    return Listing(root, newest_first(runs), newest_first(list(sweeps.values())))


# --- formatting ---------------------------------------------------------------------------


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _steps(run: RunEntry) -> str:
    """``done/planned``, ``?`` for what could not be read."""
    done = UNKNOWN if run.steps_done is None else str(run.steps_done)
    planned = UNKNOWN if run.steps_planned is None else str(run.steps_planned)
    return f"{done}/{planned}"


def run_cells(run: RunEntry, indent: str = "") -> list[str]:
    """One run's row (``indent``: an arm under its sweep)."""
    f = run.final
    status = f"{run.status} (retried)" if run.retried else run.status
    return [indent + run.run_id, run.name or "-", status, _steps(run), run.model or "-",
            run.data or "-", "-" if run.cap is None else str(run.cap), _num(f.get("len"), ".1f"),
            _num(f.get("clip"), ".3f"), _num(f.get("reward"), ".3f")]


def sweep_cells(sweep: SweepEntry) -> list[str]:
    """A sweep's row: status and arms completed/total; the run columns stay empty."""
    arms = (f"{sweep.completed}/{sweep.total} arms" if sweep.total is not None
            else f"{UNKNOWN} arms")
    return [sweep.sweep_id, sweep.name or "-", sweep.status, arms, "", "", "", "", "", ""]


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, under a header; no trailing blanks."""
    grid = [list(COLUMNS), *map(list, rows)]
    widths = [max(len(r[i]) for r in grid) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in grid)


def format_listing(listing: Listing, show: Show = "all", limit: int | None = None) -> str:
    """The table for ``show`` (top-level entries cut at ``limit``), then notes."""
    entries: Sequence[RunEntry | SweepEntry]
    if show == "runs":
        entries = listing.all_runs()
    elif show == "sweeps":
        entries = listing.sweeps
    else:
        entries = newest_first([*listing.runs, *listing.sweeps])
    what = {"all": "runs", "runs": "runs", "sweeps": "sweeps"}[show]
    if not entries:
        return f"no {what} under {listing.root.resolve()}"
    shown = entries[:limit] if limit else entries
    rows: list[list[str]] = []
    flagged: list[tuple[str, list[str]]] = []
    for entry in shown:
        if isinstance(entry, RunEntry):
            rows.append(run_cells(entry))
            flagged += [(entry.run_id, entry.problems)] if entry.problems else []
            continue
        rows.append(sweep_cells(entry))
        flagged += [(entry.sweep_id, entry.problems)] if entry.problems else []
        for arm in entry.arms:
            rows.append(run_cells(arm, indent="  "))
            flagged += [(arm.run_id, arm.problems)] if arm.problems else []
    lines = [table(rows)]
    if len(shown) < len(entries):
        lines.append(f"... {len(entries) - len(shown)} older not shown (raise -n/--limit)")
    lines += [f"note: {who}: {'; '.join(problems)}" for who, problems in flagged]
    if any(isinstance(e, RunEntry) or e.arms for e in shown):
        lines.append(FOOTER)
    return "\n".join(lines)


def list_root(runs_dir: str | Path | None = None, runs: bool = False, sweeps: bool = False,
              limit: int | None = None) -> str:
    """`grpo ls`: the listing of ``runs_dir`` (default: the store's root) as text.

    ``runs``: every run in one flat list; ``sweeps``: only sweeps; both or neither: runs and
    sweeps, arms under their sweep. A root that does not exist (or is not a directory) is a
    :class:`ConfigError`.
    """
    show: Show = "all" if runs == sweeps else "runs" if runs else "sweeps"
    root = runs_root(runs_dir)
    if not root.exists():
        raise ConfigError(f"runs root {root.resolve()} does not exist "
                          f"(pass --runs-dir or set {RUNS_ENV})")
    if not root.is_dir():
        raise ConfigError(f"runs root {root.resolve()} is not a directory")
    return format_listing(collect(root), show, limit)
