"""The local run store: ``runs/<run-id>/``, the source of truth for a run (DESIGN.md).

Writers are crash-tolerant: JSON files are replaced atomically, metrics/samples are appended
one flushed line at a time, and rollout parts appear under their final name only when
complete. Readers tolerate what a killed writer leaves behind (a partial last line, a temp
part) so a report of a crashed run still works.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

if TYPE_CHECKING:  # pandas (0.2 s) only where rollouts are read back
    import pandas as pd

RUNS_ENV = "GRPO_RUNS_DIR"

# DESIGN.md rollout columns and their on-disk types; other columns (reward components) are
# stored as float32.
ROLLOUT_SCHEMA: dict[str, pa.DataType] = {
    "step": pa.int32(),
    "prompt_id": pa.int64(),
    "sample": pa.int16(),
    "response_length": pa.int32(),
    "truncated": pa.bool_(),
    "reward": pa.float32(),
    "correct": pa.float32(),
    "advantage": pa.float32(),
}
_REQUIRED_ROLLOUT = tuple(k for k in ROLLOUT_SCHEMA if k != "correct")
# Written with logger.store_tokens=true: each row's token ids and the sampler's log-prob of
# each completion token (variable length).
TOKEN_COLUMNS: dict[str, pa.DataType] = {
    "prompt_tokens": pa.list_(pa.int32()),
    "completion_tokens": pa.list_(pa.int32()),
    "sampler_logprobs": pa.list_(pa.float32()),
}
_PART_RE = re.compile(r"^part-(\d+)-(\d+)(?:-(\d+))?\.parquet$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]*$")

_issued_ids: set[str] = set()
_issued_lock = threading.Lock()


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-<8 hex>``: sorts by start time, unique across parallel processes.

    The random suffix (32 bits from the OS) separates processes started in the same second;
    within one process ids are also checked against those already issued. Only
    ``[A-Za-z0-9-]``, so the id is also a valid W&B run id.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with _issued_lock:
        while True:
            run_id = f"{stamp}-{secrets.token_hex(4)}"
            if run_id not in _issued_ids:
                _issued_ids.add(run_id)
                return run_id


def runs_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where runs live: ``explicit``, else ``$GRPO_RUNS_DIR``, else ``./runs``."""
    chosen = explicit or os.environ.get(RUNS_ENV) or "runs"
    return Path(chosen).expanduser()


def resolve_run_dir(root: Path, run_id: str) -> Path:
    """``root/run_id``, refusing ids that would name anything but a direct child of root."""
    if not run_id or run_id in (".", "..") or not _RUN_ID_RE.match(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: use letters, digits and _ - . = + "
            "(no path separators, not starting with '.')"
        )
    return Path(root) / run_id  # the pattern admits no separator, so never outside root


def new_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[IO[Any]], object], binary: bool = False) -> None:
    """Write through a hidden temp file, fsync, then rename: readers (and a resume after
    ``kill -9``) see the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))


def to_json_value(value: Any) -> Any:
    """numpy scalars/arrays and paths -> plain JSON values (for json.dumps ``default``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _metric_value(value: Any) -> Any:
    """A plain JSON scalar for a metric, or None when it must be dropped (NaN/inf/odd)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or isinstance(value, str) or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def _append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append whole lines and flush; first end a partial line left by a killed writer."""
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))
        f.flush()


class RunStore:
    """Writer for one run directory. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: Path, flush_rows: int = 4096) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be positive, got {flush_rows}")
        self._path = Path(path)
        self.flush_rows = flush_rows
        self._chunks: list[dict[str, np.ndarray]] = []
        self._buffered = 0

    @classmethod
    def create(cls, root: Path, run_id: str, flush_rows: int = 4096) -> RunStore:
        """Make ``root/run_id`` and its sub-dirs, claiming the id by creating meta.json.

        meta.json is created exclusively (hard link of a complete temp file), so two
        processes given the same id cannot both create the run.
        """
        path = resolve_run_dir(root, run_id)
        for sub in ("rollouts", "checkpoints", "wandb"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        meta = path / "meta.json"
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".meta.json.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"run_id": run_id}, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, new_file_mode())
            try:
                os.link(tmp, meta)
            except FileExistsError:
                raise
            except OSError:  # no hard links on this filesystem: exclusive create instead
                with open(meta, "x", encoding="utf-8") as f:
                    json.dump({"run_id": run_id}, f)
        except FileExistsError:
            raise FileExistsError(
                f"run {run_id!r} already exists in {root} ({meta} is present)"
            ) from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return cls(path, flush_rows)

    @classmethod
    def open(cls, root: Path, run_id: str, flush_rows: int = 4096) -> RunStore:
        """An existing run; FileNotFoundError naming the id and root when there is none."""
        path = resolve_run_dir(root, run_id)
        if not (path / "meta.json").is_file():
            raise FileNotFoundError(f"no run {run_id!r} under {Path(root).resolve()}")
        return cls(path, flush_rows)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def run_id(self) -> str:
        return self._path.name

    @property
    def checkpoints_dir(self) -> Path:
        return self._path / "checkpoints"

    @property
    def wandb_dir(self) -> Path:
        return self._path / "wandb"

    @property
    def rollouts_dir(self) -> Path:
        return self._path / "rollouts"

    # --- config and meta -----------------------------------------------------------------

    def write_config(self, cfg: Mapping[str, Any]) -> None:
        """The fully resolved config as ``config.yaml`` (key order kept)."""
        text = yaml.safe_dump(json.loads(json.dumps(dict(cfg), default=to_json_value)),
                              sort_keys=False)
        atomic_write_text(self._path / "config.yaml", text)

    def read_meta(self) -> dict[str, Any]:
        return json.loads((self._path / "meta.json").read_text(encoding="utf-8"))

    def update_meta(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into meta.json and replace it atomically; returns the new meta."""
        path = self._path / "meta.json"
        meta = self.read_meta() if path.is_file() else {}
        meta.update(fields)
        atomic_write_text(path, json.dumps(meta, indent=2, default=to_json_value) + "\n")
        return meta

    # --- metrics and samples --------------------------------------------------------------

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """One flat JSON line per step, flushed now. NaN/inf and non-scalar values are dropped
        (a missing key means "undefined"), so every line is strict JSON."""
        if "step" not in row:
            raise ValueError("a metrics row needs a 'step'")
        clean = {}
        for key, value in row.items():
            plain = _metric_value(value)
            if plain is not None:
                clean[str(key)] = plain
        if not isinstance(clean.get("step"), int) or isinstance(clean["step"], bool):
            raise ValueError(f"step must be an integer, got {row['step']!r}")
        _append_lines(self._path / "metrics.jsonl", [json.dumps(clean, allow_nan=False)])

    def append_samples(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Decoded prompt/completion rows as JSON lines in samples.jsonl."""
        if rows:
            lines = [json.dumps(dict(r), ensure_ascii=False, default=to_json_value)
                     for r in rows]
            _append_lines(self._path / "samples.jsonl", lines)

    # --- resume -------------------------------------------------------------------------

    def truncate_after(self, step: int) -> None:
        """Drop every record of steps after ``step`` (a resume from that step's checkpoint
        re-runs them): metrics and samples lines, and rollout rows. Each file is replaced
        atomically, so a kill during the truncation leaves either the old or the new file;
        partial lines from a killed writer go too."""
        for name in ("metrics.jsonl", "samples.jsonl"):
            path = self._path / name
            if path.is_file():
                kept = b"".join(line + b"\n" for line in path.read_bytes().split(b"\n")
                                if (s := _line_step(line)) is not None and s <= step)
                atomic_write(path, lambda f, data=kept: f.write(data), binary=True)
        self._chunks, self._buffered = [], 0
        for part in rollout_parts(self._path):
            m = _PART_RE.match(part.name)
            assert m is not None  # rollout_parts lists matching names only
            first, last = int(m[1]), int(m[2])
            if last <= step:
                continue
            if first > step:
                part.unlink()
                continue
            table = pq.read_table(part)
            table = table.filter(pc.less_equal(table["step"], step))
            atomic_write(part, lambda f, t=table: pq.write_table(
                t, f, compression="zstd", compression_level=9), binary=True)

    # --- rollouts -------------------------------------------------------------------------

    def add_rollouts(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        """Buffer one row per completion; writes a part once ``flush_rows`` are buffered."""
        chunk = {name: np.asarray(values) for name, values in columns.items()}
        missing = [c for c in _REQUIRED_ROLLOUT if c not in chunk]
        if missing:
            raise ValueError(f"rollout columns missing: {missing}")
        sizes = {name: arr.shape for name, arr in chunk.items()}
        n = chunk["step"].shape[0]
        if any(shape != (n,) for shape in sizes.values()):
            raise ValueError(f"rollout columns must be 1-D of equal length, got {sizes}")
        if n == 0:
            return
        self._chunks.append(chunk)
        self._buffered += n
        if self._buffered >= self.flush_rows:
            self.flush_rollouts()

    def flush_rollouts(self) -> Path | None:
        """Write buffered rows as one zstd Parquet part; returns its path (None if empty).

        The part is written under a temp name and renamed, so a killed process never leaves
        a half part under a ``part-*.parquet`` name.
        """
        if not self._chunks:
            return None
        table = _rollout_table(self._chunks)
        first = min(int(c["step"].min()) for c in self._chunks)
        last = max(int(c["step"].max()) for c in self._chunks)
        self.rollouts_dir.mkdir(parents=True, exist_ok=True)
        final = self.rollouts_dir / f"part-{first:06d}-{last:06d}.parquet"
        seq = 0
        while final.exists():  # same step range written twice (e.g. one step split in two)
            seq += 1
            final = self.rollouts_dir / f"part-{first:06d}-{last:06d}-{seq}.parquet"
        atomic_write(final, lambda f: pq.write_table(table, f, compression="zstd",
                                                     compression_level=9), binary=True)
        self._chunks = []
        self._buffered = 0
        return final


def _rollout_table(chunks: list[dict[str, np.ndarray]]) -> pa.Table:
    """Concatenate buffered chunks into a typed table (columns absent in a chunk -> null)."""
    names: list[str] = list(ROLLOUT_SCHEMA)
    for chunk in chunks:
        names += [k for k in chunk if k not in names]
    arrays, fields = [], []
    for name in names:
        dtype = ROLLOUT_SCHEMA.get(name) or TOKEN_COLUMNS.get(name) or pa.float32()
        pieces = []
        for chunk in chunks:
            n = chunk["step"].shape[0]
            if name not in chunk:
                pieces.append(pa.nulls(n, dtype))
                continue
            values = chunk[name]
            mask = None
            if pa.types.is_floating(dtype):
                values = values.astype(np.float32)
                if name == "correct":  # unknown correctness is null, not a number
                    mask = np.isnan(values)
            elif name == "truncated":
                values = values.astype(bool)
            elif name in TOKEN_COLUMNS:
                cast = float if pa.types.is_floating(dtype.value_type) else int
                values = [list(map(cast, v)) for v in values]
            else:
                values = _checked_int(name, values, dtype)
            pieces.append(pa.array(values, type=dtype, mask=mask))
        arrays.append(pa.chunked_array(pieces, type=dtype))
        fields.append(pa.field(name, dtype))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _checked_int(name: str, values: np.ndarray, dtype: pa.DataType) -> np.ndarray:
    """Cast to the column's integer type, refusing values that would wrap around."""
    np_type = np.dtype(dtype.to_pandas_dtype())
    info = np.iinfo(np_type)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise ValueError(f"rollout column {name!r} has values outside {np_type}")
    return values.astype(np_type)


# --- readers (tolerate a killed writer) ---------------------------------------------------


def _line_step(line: bytes) -> int | None:
    """The ``step`` of one JSON line, or None for a blank, partial or unreadable line."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl, one per step, ordered by step.

    A partial last line (the writer was killed mid-write) is dropped silently; any other
    unreadable line is dropped with a warning. Rows with the same step (a resumed run that
    re-logged steps, or rows logged separately for one step) are merged, later values winning.
    A run dir without metrics.jsonl (killed before step 0) gives [].
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    by_step: dict[int, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            step = row["step"]
            if not isinstance(step, int):
                raise TypeError("step is not an integer")
        except (ValueError, KeyError, TypeError) as e:
            if i != len(lines) - 1:  # the last piece is only partial if it lacks "\n"
                warnings.warn(f"{path}:{i + 1}: skipping unreadable line ({e})", stacklevel=2)
            continue
        by_step.setdefault(step, {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def rollout_parts(run_dir: Path | str) -> list[Path]:
    """Complete rollout parts in step order (temp files from a killed writer are ignored)."""
    folder = Path(run_dir) / "rollouts"
    if not folder.is_dir():
        return []
    keyed = []
    for p in folder.iterdir():
        m = _PART_RE.match(p.name)
        if m and p.is_file():
            keyed.append(((int(m[1]), int(m[2]), int(m[3] or 0)), p))
    return [p for _, p in sorted(keyed)]


def read_rollouts(run_dir: Path | str) -> pd.DataFrame:
    """All complete rollout parts as one DataFrame, in step order.

    Unreadable parts are skipped with a warning; a missing ``correct`` reads as NaN.
    Parts with different reward components are aligned, missing values as NaN.
    """
    tables = []
    for part in rollout_parts(run_dir):
        try:
            tables.append(pq.read_table(part))
        except (pa.ArrowException, OSError) as e:
            warnings.warn(f"skipping unreadable rollout part {part}: {e}", stacklevel=2)
    if not tables:
        empty = pa.schema([pa.field(k, v) for k, v in ROLLOUT_SCHEMA.items()]).empty_table()
        return empty.to_pandas()
    table = pa.concat_tables(tables, promote_options="default")
    return table.to_pandas()
