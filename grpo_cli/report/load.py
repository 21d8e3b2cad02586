"""Turn what the user typed (run ids, a sweep id, a W&B run) into in-memory run data.

Only the six rollout columns the report uses are read from Parquet, as numpy arrays, so a
store of a million completions costs tens of MB. Every user mistake (unknown id, a path
instead of an id, a sweep without runs) is a :class:`ConfigError`, which the CLI prints as
one line with exit code 2.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from grpo_cli.config.keys import shown
from grpo_cli.errors import ConfigError
from grpo_cli.telemetry.store import read_metrics, resolve_run_dir, rollout_parts, runs_root
from grpo_cli.telemetry.wandb_files import read_wandb_history

ROLLOUT_COLUMNS = ("step", "response_length", "truncated", "reward", "correct", "prompt_id")
HIST_KEY = "length/hist"
# Config keys that differ between runs without making them different experiments.
_IDENTITY_KEYS = ("run_id", "name", "sweep_id", "runs_dir", "seed")
_IDENTITY_PREFIXES = ("logger.",)
SAME_CONFIG = "same config"  # group name of runs whose configs differ only in seed


@dataclass
class Rollouts:
    """One entry per completion (numpy, aligned); ``correct`` is NaN where unknown."""

    step: np.ndarray
    length: np.ndarray
    truncated: np.ndarray
    reward: np.ndarray
    correct: np.ndarray
    prompt_id: np.ndarray | None = None  # the prompt group; None in stores without it

    def __len__(self) -> int:
        return int(self.step.shape[0])


@dataclass
class Histograms:
    """Per-step length histograms as logged to W&B (used when there are no rollouts)."""

    steps: list[int]
    counts: list[np.ndarray]
    edges: list[np.ndarray]


@dataclass
class RunData:
    run_id: str
    source: str  # "store" | "wandb-offline" | "wandb-online"
    path: Path | None
    config: dict[str, Any]
    meta: dict[str, Any]
    metrics: pd.DataFrame  # one row per step (index: step), numeric metric columns
    rollouts: Rollouts | None = None
    histograms: Histograms | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label: str = ""
    group: str = ""  # runs with equal group differ only in seed
    # the `grpo sweep` overrides that made this arm (seed included), when it came from one
    overrides: list[str] | None = None
    # ... and the overrides every arm of that sweep shared (config= and hydra/ left out)
    common_overrides: list[str] = field(default_factory=list)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def name(self) -> str | None:
        """The ``name=`` given to `grpo run` (meta.json, else config.yaml), or None."""
        for value in (self.meta.get("name"), self.config.get("name")):
            if value is not None and str(value).strip():
                return str(value).strip()
        return None

    @property
    def ident(self) -> str:
        """``name (id)`` for a named run, else the id."""
        return f"{self.name} ({self.run_id})" if self.name else self.run_id

    @property
    def loss_agg_mode(self) -> str | None:
        algo = self.config.get("algorithm")
        return algo.get("loss_agg_mode") if isinstance(algo, dict) else None


@dataclass
class Loaded:
    runs: list[RunData]
    name: str  # default report folder name
    notes: list[str] = field(default_factory=list)


# --- entry point --------------------------------------------------------------------------


def load_targets(targets: Sequence[str], runs_dir: Path | str | None = None) -> Loaded:
    """Resolve every target and load its data; labels and seed groups are filled in."""
    if not targets:
        raise ConfigError("name at least one run id, sweep id or W&B run")
    root = runs_root(runs_dir)
    runs: list[RunData] = []
    notes: list[str] = []
    names: list[str] = []
    for target in targets:
        if target.startswith("wandb:"):
            run = load_wandb_online(target)
            runs.append(run)
            names.append(f"wandb-{run.run_id}")
        elif _looks_like_path(target):
            runs.append(load_path(Path(target)))
            names.append(runs[-1].run_id)
        else:
            kind, path = _resolve_id(root, target)
            if kind == "sweep":
                arm_runs, arm_notes = load_sweep(root, path)
                runs += arm_runs
                notes += arm_notes
            else:
                runs.append(load_store_run(path))
            names.append(target)
    seen: set[str] = set()
    for run in runs:
        if run.run_id in seen:
            raise ConfigError(f"run {run.run_id!r} is named twice")
        seen.add(run.run_id)
    assign_labels(runs)
    return Loaded(runs, _report_name(names), notes)


def _report_name(names: list[str]) -> str:
    safe = [re.sub(r"[^A-Za-z0-9_.=+-]", "_", n).strip("._") or "run" for n in names]
    if len(safe) == 1:
        return safe[0]
    if len(safe) == 2:
        return f"{safe[0]}_vs_{safe[1]}"
    return f"{safe[0]}_and_{len(safe) - 1}_more"


def _looks_like_path(target: str) -> bool:
    return "/" in target or "\\" in target or target.startswith(("~", "."))


def _resolve_id(root: Path, target: str) -> tuple[str, Path]:
    """A run id or sweep id under ``root``; ids never name anything outside it."""
    try:
        run_path = resolve_run_dir(root, target)
        sweep_path = resolve_run_dir(root / "sweeps", target)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (sweep_path / "manifest.json").is_file():
        return "sweep", sweep_path
    if run_path.is_dir() and any((run_path / f).exists()
                                 for f in ("meta.json", "metrics.jsonl", "wandb")):
        return "run", run_path
    raise ConfigError(f"no run or sweep {target!r} under {root.resolve()}")


# --- run stores ---------------------------------------------------------------------------


def load_store_run(path: Path) -> RunData:
    """A grpo run directory; falls back to its W&B files when metrics.jsonl is missing."""
    meta = _read_json(path / "meta.json")
    config = _read_yaml(path / "config.yaml")
    run_id = str(meta.get("run_id") or path.name)
    notes: list[str] = []
    try:
        rows = read_metrics(path)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    histograms = None
    source = "store"
    if not rows:
        run_file = _wandb_file(path)
        if run_file is None:
            raise ConfigError(f"run {run_id}: no metrics.jsonl and no W&B run files in {path}")
        rows = _history_rows(run_file)
        histograms = histograms_from_rows(rows)
        source = "wandb-offline"
        notes.append("metrics read from the run's offline W&B files (metrics.jsonl missing)")
    metrics = metrics_frame(rows)
    rollouts = read_rollout_columns(path)
    if rollouts is None:
        notes.append("no rollout Parquet rows: no length heat map from rollouts and no "
                     "censoring-aware (Kaplan-Meier) estimate")
        if histograms is None and (wb := _wandb_file(path)) is not None:
            try:
                histograms = histograms_from_rows(_history_rows(wb))
            except ConfigError as e:  # the heat map is optional here
                notes.append(f"W&B histograms unreadable: {e}")
    elif rollouts.prompt_id is None:
        notes.append("rollout rows without prompt ids (an older store): where length variance "
                     "lives comes from metrics.jsonl where it was logged, else is left out")
    if metrics.empty and rollouts is None:
        raise ConfigError(f"run {run_id}: no steps recorded yet in {path}")
    steps = len(metrics) if not metrics.empty else len(np.unique(rollouts.step))
    status = meta.get("status")
    if status == "failed":
        why = f": {meta['error']}" if meta.get("error") else ""
        notes.append(f"failed after {steps} recorded step(s){why}; its first/last windows "
                     "cover those steps only")
    elif status in ("running", "interrupted"):
        notes.append(f"{status}: {steps} step(s) recorded so far; its first/last windows "
                     "cover those steps only")
    return RunData(run_id, source, path, config, meta, metrics, rollouts, histograms,
                   read_samples(path / "samples.jsonl"), notes)


def load_path(path: Path) -> RunData:
    """An explicit directory: a grpo run dir, or a W&B offline run dir (``offline-run-*``)."""
    path = path.expanduser()
    if not path.is_dir():
        raise ConfigError(f"{path}: not a directory (expected a run id, a sweep id, or a "
                          "run / W&B offline-run directory)")
    if (path / "meta.json").is_file() or (path / "metrics.jsonl").is_file():
        return load_store_run(path)
    files = sorted(path.glob("run-*.wandb"))
    if not files:
        if (path / "wandb").is_dir() and _wandb_file(path) is not None:
            return load_store_run(path)
        raise ConfigError(f"{path}: neither a grpo run directory nor a W&B offline run "
                          "directory (no meta.json, metrics.jsonl or run-*.wandb)")
    return load_wandb_offline(path, files[-1])


def load_wandb_offline(run_dir: Path, run_file: Path) -> RunData:
    """A W&B offline run directory on its own: history only, no rollouts or samples.

    The config comes from the grpo run around it (``<run>/wandb/offline-run-*``) when there is
    one, else from W&B's ``files/config.yaml`` (written by synced runs), else it is unknown.
    """
    rows = _history_rows(run_file)
    if not rows:
        raise ConfigError(f"{run_file}: the W&B run has no history rows")
    grpo_dir = run_dir.parent.parent
    config = _read_yaml(grpo_dir / "config.yaml") if run_dir.parent.name == "wandb" else {}
    if not config:
        config = _wandb_config(run_dir / "files" / "config.yaml")
    run_id = run_file.stem.removeprefix("run-")
    notes = ["W&B-only run: no rollout rows, so no censoring-aware (Kaplan-Meier) estimate; "
             "the heat map uses the logged length histograms"]
    if not config:
        notes.append("no config found next to the W&B files: loss-aggregation check skipped")
    return RunData(run_id, "wandb-offline", run_dir, config, {}, metrics_frame(rows), None,
                   histograms_from_rows(rows), [], notes)


def load_wandb_online(target: str) -> RunData:
    """``wandb:entity/project/run_id`` through ``wandb.Api()``.

    Not tested here (the test machines have no network): it only fetches the history and
    config and hands them to the same converters as the offline path.
    """
    spec = target.removeprefix("wandb:")
    if spec.count("/") != 2 or not all(spec.split("/")):
        raise ConfigError(f"{target!r}: expected wandb:entity/project/run_id")
    try:
        import wandb

        api_run = wandb.Api().run(spec)
        rows = [dict(r) for r in api_run.scan_history()]
        config = {k: v for k, v in dict(api_run.config).items() if not k.startswith("_")}
    except Exception as e:  # network, auth, unknown run: all one line for the user
        raise ConfigError(f"{target}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                          ) from None
    if not rows:
        raise ConfigError(f"{target}: the W&B run has no history rows")
    notes = ["W&B-only run: no rollout rows, so no censoring-aware (Kaplan-Meier) estimate"]
    return RunData(spec.split("/")[-1], "wandb-online", None, config, {}, metrics_frame(rows),
                   None, histograms_from_rows(rows), [], notes)


# --- sweeps -------------------------------------------------------------------------------


def load_sweep(root: Path, sweep_dir: Path) -> tuple[list[RunData], list[str]]:
    """Every arm of a sweep with data; arms without a run are listed in the notes."""
    manifest = _read_json(sweep_dir / "manifest.json")
    arms = manifest.get("arms")
    if not isinstance(arms, list):
        raise ConfigError(f"sweep {sweep_dir.name}: malformed manifest (no arms list)")
    runs, notes = [], []
    common = [str(o) for o in manifest.get("common_overrides") or []
              if not str(o).startswith(("config=", "hydra/", "hydra."))]
    for arm in arms:
        if not isinstance(arm, dict) or "index" not in arm:
            raise ConfigError(f"sweep {sweep_dir.name}: malformed arm entry {arm!r}")
        status = _read_json(sweep_dir / "arms" / f"{int(arm['index']):03d}.json")
        run_id = str(status.get("run_id") or arm.get("run_id") or "")
        try:
            path = resolve_run_dir(root, run_id)
        except ValueError as e:
            raise ConfigError(f"sweep {sweep_dir.name}: arm {arm['index']}: {e}") from None
        overrides = " ".join(arm.get("overrides") or []) or "-"
        if not path.is_dir() or not ((path / "metrics.jsonl").is_file() or _wandb_file(path)):
            notes.append(f"arm {arm['index']} ({overrides}) has no recorded steps "
                         f"(status {status.get('status', arm.get('status', 'unknown'))})")
            continue
        try:
            run = load_store_run(path)
        except ConfigError as e:
            notes.append(f"arm {arm['index']} ({overrides}) skipped: {e}")
            continue
        run.overrides = [str(o) for o in arm.get("overrides") or []]
        run.common_overrides = common
        runs.append(run)
    if not runs:
        raise ConfigError(f"sweep {sweep_dir.name}: no arm has recorded steps yet")
    return runs, notes


# --- readers ------------------------------------------------------------------------------


def read_rollout_columns(run_dir: Path) -> Rollouts | None:
    """The report's six columns from every complete part (unreadable parts are skipped)."""
    pieces: dict[str, list[np.ndarray]] = {c: [] for c in ROLLOUT_COLUMNS}
    for part in rollout_parts(run_dir):
        try:
            pf = pq.ParquetFile(part)
            names = set(pf.schema_arrow.names)
            cols = [c for c in ROLLOUT_COLUMNS if c in names]
            if not {"step", "response_length", "truncated"} <= set(cols):
                warnings.warn(f"skipping rollout part {part}: required columns missing",
                              stacklevel=2)
                continue
            table = pf.read(columns=cols)
        except (pa.ArrowException, OSError) as e:
            warnings.warn(f"skipping unreadable rollout part {part}: {e}", stacklevel=2)
            continue
        n = table.num_rows
        for name in ROLLOUT_COLUMNS:
            if name in names:
                arr = table.column(name).to_numpy()
            else:
                arr = np.full(n, np.nan, dtype=np.float32)
            pieces[name].append(arr)
    if not pieces["step"] or sum(len(p) for p in pieces["step"]) == 0:
        return None
    cat = {k: np.concatenate(v) for k, v in pieces.items()}
    prompt = cat["prompt_id"]
    return Rollouts(step=cat["step"].astype(np.int64), length=cat["response_length"],
                    truncated=cat["truncated"].astype(bool),
                    reward=cat["reward"].astype(np.float32),
                    correct=cat["correct"].astype(np.float32),
                    prompt_id=prompt.astype(np.int64) if np.isfinite(prompt).all() else None)


def metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Numeric scalars per step (W&B's ``_step``/``_runtime`` bookkeeping dropped)."""
    clean: dict[int, dict[str, float]] = {}
    for row in rows:
        step = row.get("step", row.get("_step"))
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        out = clean.setdefault(int(step), {})
        for key, value in row.items():
            if key.startswith("_") or key == "step" or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and np.isfinite(value):
                out[key] = float(value)
    frame = pd.DataFrame.from_dict(clean, orient="index").sort_index()
    frame.index.name = "step"
    return frame


def histograms_from_rows(rows: list[dict[str, Any]]) -> Histograms | None:
    """``length/hist`` W&B histogram values (``{"_type": "histogram", values, bins}``)."""
    steps, counts, edges = [], [], []
    for row in rows:
        hist = row.get(HIST_KEY)
        step = row.get("step", row.get("_step"))
        if not isinstance(hist, dict) or not isinstance(step, (int, float)):
            continue
        values, bins = hist.get("values"), hist.get("bins")
        if not values or not bins or len(bins) != len(values) + 1:
            continue
        steps.append(int(step))
        counts.append(np.asarray(values, dtype=np.float64))
        edges.append(np.asarray(bins, dtype=np.float64))
    return Histograms(steps, counts, edges) if steps else None


def read_samples(path: Path) -> list[dict[str, Any]]:
    """samples.jsonl rows; unreadable lines (a killed writer's partial line) are skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{path}: malformed JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    return data if isinstance(data, dict) else {}


def _history_rows(run_file: Path) -> list[dict[str, Any]]:
    try:
        return list(read_wandb_history(run_file).values())
    except Exception as e:  # truncated/corrupt protobuf records, wrong magic, I/O
        raise ConfigError(f"{run_file}: not a readable W&B run file "
                          f"({type(e).__name__}: {str(e)[:200]})") from None


def _wandb_config(path: Path) -> dict[str, Any]:
    """W&B's config.yaml stores ``key: {value: ...}``; unwrap it."""
    raw = _read_yaml(path)
    return {k: v["value"] for k, v in raw.items()
            if not k.startswith("_") and isinstance(v, dict) and "value" in v}


def _wandb_file(run_dir: Path) -> Path | None:
    files = sorted((run_dir / "wandb").glob("*run-*/run-*.wandb"))
    return files[-1] if files else None


# --- labels and seed groups ---------------------------------------------------------------


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (values as text, for comparison and labels)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value, default=str) if isinstance(value, list) else str(value)
    return out


def _schema_defaults() -> dict[str, str]:
    """Every config key's default, flattened like :func:`flatten` (values as text)."""
    from dataclasses import asdict

    from grpo_cli.config.schema import RunConfig

    return flatten(asdict(RunConfig()))


def assign_labels(runs: list[RunData]) -> None:
    """Label each run by the config keys that set it apart; group runs that differ only in seed.

    One run: its name (``name=``), else its id. Several: ``max_len=16
    algorithm.loss_agg_mode=token-mean``-style labels from the differing keys (seed excluded
    from the group, appended to the label); a run whose name no other run shares is labelled
    by that name instead. Groups stay by config, so seeds still band together.
    """
    # A key a run's config lacks because an older grpo-cli wrote it (e.g. trainer.adam_eps)
    # ran at the default: fill it, so a version difference is not an experiment difference.
    defaults = _schema_defaults() if any(r.config for r in runs) else {}
    flat = [({**{k: v for k, v in defaults.items() if k not in f}, **f} if f else f)
            for f in (flatten(r.config) for r in runs)]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys
                 if k not in _IDENTITY_KEYS and not k.startswith(_IDENTITY_PREFIXES)
                 and len({f.get(k) for f in flat}) > 1]
    # The group is every differing value (runs differing only in seed share it); the label is
    # shorter: the sweep's own overrides where the run came from one, else the first three
    # differing keys, all of them where three do not tell two groups apart.
    full = {run.run_id: [shown(f"{k}={f.get(k, '-')}") for k in differing]
            for run, f in zip(runs, flat, strict=True)}
    for run, f in zip(runs, flat, strict=True):
        run.group = (" ".join(full[run.run_id]) or SAME_CONFIG) if f else run.run_id
    short = {run.group: _short_label(run, full[run.run_id]) for run in runs}
    taken = list(short.values())
    short = {group: group if taken.count(label) > 1 else label  # ambiguous: spell it all
             for group, label in short.items()}
    for run in runs:
        run.group = short[run.group]
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    names = [r.name for r in runs]
    for group, members in groups.items():
        for run in members:
            if run.name is not None and names.count(run.name) == 1:
                run.label = run.name
            elif len(runs) == 1:
                run.label = run.run_id
            elif len(members) > 1:
                run.label = f"seed={run.seed}" if group == SAME_CONFIG \
                    else f"{group} seed={run.seed}"
            else:
                run.label = run.run_id if group == SAME_CONFIG else group
    labels = [r.label for r in runs]
    if len(set(labels)) < len(labels):  # no config tells them apart: fall back to ids
        for run in runs:
            run.label = run.ident
            run.group = run.ident


def _short_label(run: RunData, parts: list[str]) -> str:
    """A run's group label: its sweep overrides without the seed (a sweep over seeds alone,
    compared with other runs: the overrides its arms shared), else <= 3 differing keys."""
    if run.overrides is not None:
        mine = [shown(o) for o in run.overrides if o.split("=", 1)[0].lstrip("+~") != "seed"]
        if not mine and parts:
            mine = [shown(o) for o in run.common_overrides]
        if mine:
            return " ".join(mine)
    if not parts:
        return SAME_CONFIG if run.config else run.run_id
    return " ".join(parts[:3]) + (" …" if len(parts) > 3 else "")


def display_name(run: RunData, sep: str = " ") -> str:
    """The label with what identifies the run: ``label (name, id)``, ``name (id)`` or the id
    (``sep`` goes before the parenthesis: a space in tables, a newline in figure titles)."""
    if run.label in (run.run_id, run.ident, ""):
        return run.ident
    who = [run.name] if run.name and run.name != run.label else []
    return f"{run.label}{sep}({', '.join([*who, run.run_id])})"
