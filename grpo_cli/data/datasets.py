"""Load prompt datasets (JSONL, Parquet, HF dataset id with ``@split``, or ``toy:<task>``).

Prompts are built once: template -> chat messages -> chat template -> token ids. Prompts
longer than ``data.max_prompt_length`` are dropped and counted, never silently truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grpo_cli.config.schema import DataConfig
from grpo_cli.errors import ConfigError


def load_rows(spec: str, data: DataConfig, seed: int, key: str = "data.train_files") -> list[dict]:
    """Rows as dicts. ``key`` names the config key in error messages."""
    if spec.startswith("toy:"):
        from grpo_cli.data.toy import generate_rows

        return generate_rows(spec.split(":", 1)[1], size=data.toy_size, seed=seed)
    path_part, _, split = spec.partition("@")
    path = Path(path_part).expanduser()
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl(path, key)
    if path.suffix == ".parquet":
        return _read_parquet(path, key)
    if path.is_dir():
        files = sorted(path.glob(f"{split or '*'}*.parquet")) or sorted(path.glob("*.jsonl"))
        if not files:
            raise ConfigError(f"{key}={spec}: no .parquet or .jsonl files in {path}")
        rows: list[dict] = []
        for f in files:
            rows += _read_parquet(f, key) if f.suffix == ".parquet" else _read_jsonl(f, key)
        return rows
    return _read_hub(path_part, split or "train", key)


def first_row_columns(spec: str) -> list[str] | None:
    """The columns of a local JSONL / Parquet file's first row, read cheaply at start-up
    (None for other sources and for files the full read will report on)."""
    path = Path(spec.partition("@")[0]).expanduser()
    if not path.is_file():
        return None
    if path.suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as f:
            line = next((ln for ln in f if ln.strip()), None)
        try:
            row = json.loads(line) if line else None
        except json.JSONDecodeError:
            return None
        return sorted(row) if isinstance(row, dict) else None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return sorted(pq.read_schema(path).names)
        except Exception:  # corrupt: the full read names the problem
            return None
    return None


def check_columns(spec: str, key: str, required: dict[str, str]) -> None:
    """The columns ``required`` names (config key -> column) exist in the file's first row
    (before any model loads)."""
    columns = first_row_columns(spec)
    if columns is None:
        return
    for col_key, col in required.items():
        if col not in columns:
            raise ConfigError(f"{col_key}={col}: {key}={spec} has no such column "
                              f"(columns: {', '.join(columns)})")


def _read_jsonl(path: Path, key: str) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"{key}={path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}={path}: line {lineno} is not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise ConfigError(f"{key}={path}: line {lineno} is not a JSON object")
            rows.append(row)
    return rows


def _read_parquet(path: Path, key: str) -> list[dict]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConfigError(f"{key}={path}: file not found")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ConfigError(f"{key}={path}: cannot read Parquet ({e})") from e


def _read_hub(name: str, split: str, key: str) -> list[dict]:
    try:
        import datasets
    except ImportError as e:
        raise ConfigError(
            f"{key}={name}@{split}: not a local file; loading a hub dataset needs "
            "`pip install datasets` and network access"
        ) from e
    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as e:
        raise ConfigError(f"{key}={name}@{split}: cannot load dataset ({e})") from e


def dataset_dir(spec: str) -> Path | None:
    """Where relative image paths in a dataset's rows are resolved."""
    if spec.startswith("toy:"):
        return None
    path = Path(spec.partition("@")[0]).expanduser()
    return path if path.is_dir() else path.parent if path.exists() else None


@dataclass
class PromptSet:
    """Tokenised prompts with the rows they came from."""

    prompt_ids: list[list[int]]
    rows: list[dict[str, Any]]
    texts: list[str]
    dropped: int  # rows whose prompt exceeded data.max_prompt_length
    bad_rows: int = 0  # rows skipped for unusable images (data.on_bad_row=skip)
    # Vision-language prompts: the processor and each prompt's chat messages (images decoded
    # lazily per step by :meth:`vision`, so pixels are not all held in memory).
    processor: Any = None
    base_dir: Path | None = None
    # data.length_budget: the token budget each prompt's text asks for (L1), else None.
    budgets: list[int] | None = None

    def _messages(self, index: int, data: DataConfig) -> list[dict[str, Any]]:
        from grpo_cli.data.vision import row_images, vision_messages

        row = self.rows[index]
        text = prompt_text(row, data, index)
        if self.budgets is not None:
            text = with_budget(text, self.budgets[index], data)
        return vision_messages(text, row_images(row, data.image_key, self.base_dir),
                               data.min_pixels, data.max_pixels)

    def images(self, index: int, data: DataConfig) -> list[Any]:
        """Prompt ``index``'s images as PIL, resized within data.min/max_pixels ([] for text
        prompts): what vLLM takes, and what :meth:`vision` turns into tensors."""
        if self.processor is None:
            return []
        from qwen_vl_utils import process_vision_info

        images, _ = process_vision_info(self._messages(index, data))
        return list(images or [])

    def vision(self, index: int, data: DataConfig) -> dict[str, Any]:
        """``pixel_values`` / ``image_grid_thw`` of prompt ``index`` ({} for text prompts)."""
        if self.processor is None:
            return {}
        from grpo_cli.data.vision import image_inputs

        return image_inputs(self.processor, self.images(index, data))


def prompt_text(row: dict[str, Any], data: DataConfig, index: int) -> str:
    if data.prompt_key not in row:
        raise ConfigError(
            f"data.prompt_key={data.prompt_key}: row {index} has no such column "
            f"(columns: {', '.join(sorted(row))})"
        )
    fields = {**row, "problem": row[data.prompt_key], "prompt": row[data.prompt_key]}
    try:
        return data.prompt_template.format(**fields)
    except (KeyError, IndexError) as e:
        raise ConfigError(f"data.prompt_template: unknown field {e} (row {index})") from e


def length_budget(seed: int, row: int, low: int, high: int) -> int:
    """L1's per-prompt budget N, uniform in [low, high], a pure function of (seed, row index):
    the same prompt asks for the same budget in every run with that seed, resumed or not."""
    return int(np.random.default_rng([seed, row, 0x4C31]).integers(low, high + 1))


def with_budget(text: str, budget: int, data: DataConfig) -> str:
    """The prompt with L1's budget instruction: ``data.length_budget_template`` with
    ``{prompt}`` (the templated prompt) and ``{budget}`` filled in."""
    return data.length_budget_template.format(prompt=text, budget=budget)


def build_prompts(rows: list[dict], data: DataConfig, tokenizer: Any, processor: Any = None,
                  spec: str = "", key: str = "data.train_files", seed: int = 0) -> PromptSet:
    """Apply the template and the chat template; drop (and count) long prompts.

    With a VL ``processor`` the row's images go through qwen-vl-utils and the processor (image
    pads expanded, so lengths are real); a row whose images are unusable stops the run naming
    the row (0-based), or is skipped and counted with ``data.on_bad_row=skip``. ``spec`` is
    the dataset as configured under ``key`` (relative image paths resolve next to it). With
    ``data.length_budget`` each prompt asks for a budget drawn from (``seed``, row index).
    """
    from grpo_cli.data.vision import BadImage, encode_prompt, row_images, vision_messages

    if rows and data.answer_key not in rows[0]:
        raise ConfigError(
            f"data.answer_key={data.answer_key}: no such column "
            f"(columns: {', '.join(sorted(rows[0]))})"
        )
    base_dir = dataset_dir(spec) if spec else None
    source = f"{key}={spec}" if spec else key
    kept_ids, kept_rows, kept_texts, dropped, bad = [], [], [], 0, 0
    budgets: list[int] | None = [] if data.length_budget else None
    for i, row in enumerate(rows):
        text = prompt_text(row, data, i)
        budget = 0
        if budgets is not None:
            budget = length_budget(seed, i, *data.length_budget)
            text = with_budget(text, budget, data)
        if processor is not None:
            try:
                messages = vision_messages(text, row_images(row, data.image_key, base_dir),
                                           data.min_pixels, data.max_pixels)
                rendered, ids, _ = encode_prompt(processor, messages)
            except BadImage as e:
                if data.on_bad_row == "fail":
                    raise ConfigError(f"{source}: row {i}: {e} (data.on_bad_row=skip skips "
                                      "such rows)") from e
                bad += 1
                continue
        elif row.get(data.image_key):
            raise ConfigError(
                f"{source}: row {i} has images (data.image_key={data.image_key}) but the "
                "model is text-only; use a vision-language model or drop the column")
        elif getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        else:
            rendered = text
        if processor is None:
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if len(ids) > data.max_prompt_length:
            dropped += 1
            continue
        kept_ids.append(ids)
        kept_rows.append(row)
        kept_texts.append(rendered)
        if budgets is not None:
            budgets.append(budget)
    if not kept_ids:
        if bad == len(rows):
            raise ConfigError(f"{source}: no row has usable images ({bad} skipped)")
        raise ConfigError(
            f"data.max_prompt_length={data.max_prompt_length}: every prompt is longer; "
            "raise it or shorten the prompts"
        )
    return PromptSet(kept_ids, kept_rows, kept_texts, dropped, bad, processor, base_dir,
                     budgets)


class PromptSampler:
    """Epoch-wise shuffled prompt order, identical on every rank; its state is resumable."""

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def next(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.size:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            take = min(k - len(out), self.size - self.pos)
            out += self._order[self.pos : self.pos + take].tolist()
            self.pos += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._make_order()
