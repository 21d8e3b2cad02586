"""Load and call user reward functions (``module:fn`` or ``path/to/file.py:fn``).

The contract (DESIGN.md): ``fn(reward_inputs: list[dict]) -> list[float | dict]``, called once
per batch; a dict holds ``overall`` plus named components, each recorded as its own column.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from grpo_cli.errors import ConfigError, RewardContractError, RewardError

RewardFn = Callable[[list[dict[str, Any]]], list[Any]]


def check_reward_spec(spec: str) -> None:
    """Fail at start-up, without importing the user's code, when ``module:fn`` or
    ``file.py:fn`` cannot be found or does not define ``fn`` at top level (import errors
    inside the file still surface when it loads)."""
    import ast

    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(f"reward.function={spec}: use module:fn or path/to/file.py:fn")
    if target.endswith(".py"):
        source: Path | None = Path(target).expanduser()
        if not source.is_file():
            raise ConfigError(f"reward.function={spec}: file {source} not found")
    else:
        try:
            mod_spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            mod_spec = None
        if mod_spec is None:
            raise ConfigError(f"reward.function={spec}: no module named {target}")
        origin = mod_spec.origin
        source = Path(origin) if origin and origin.endswith(".py") else None
    if source is None:
        return
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    except SyntaxError as e:
        raise ConfigError(f"reward.function={spec}: {source} line {e.lineno}: {e.msg}") from e
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                return  # names we cannot see statically
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.If | ast.Try | ast.With):
            return  # conditional definitions: leave it to the import
    if name not in bound:
        funcs = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef))
        raise ConfigError(f"reward.function={spec}: {target} has no function {name} "
                          f"(functions: {', '.join(funcs) or 'none'})")


def load_reward_fn(spec: str, kwargs: dict[str, Any] | None = None) -> RewardFn:
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(f"reward.function={spec}: use module:fn or path/to/file.py:fn")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"reward.function={spec}: file {path} not found")
        mod_spec = importlib.util.spec_from_file_location(f"grpo_user_reward_{path.stem}", path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"reward.function={spec}: importing {path} failed: {e!r}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ConfigError(f"reward.function={spec}: cannot import {target}: {e!r}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward.function={spec}: {target} has no function {name}")
    return partial(fn, **kwargs) if kwargs else fn


@dataclass
class Scores:
    overall: np.ndarray  # [N] float
    correct: np.ndarray  # [N] float, NaN where the reward does not report correctness
    components: dict[str, np.ndarray]  # name -> [N] float (NaN where a row lacks it)


def score_batch(fn: RewardFn, inputs: list[dict[str, Any]]) -> Scores:
    """Call the reward once for the batch and check what it returned."""
    try:
        results = fn(inputs)
    except Exception as e:
        raise RewardError(f"reward function raised on a batch of {len(inputs)} "
                          f"(first prompt: {_short(inputs[0].get('prompt', ''))!r}): {e!r}") from e
    if not isinstance(results, list | tuple) or len(results) != len(inputs):
        got = len(results) if isinstance(results, list | tuple) else type(results).__name__
        raise RewardContractError(
            f"reward function must return a list of {len(inputs)} scores, got {got}")
    n = len(inputs)
    overall = np.empty(n, dtype=np.float64)
    components: dict[str, np.ndarray] = {}
    for i, res in enumerate(results):
        if isinstance(res, dict):
            if "overall" not in res:
                raise RewardContractError(
                    f"sample {i}: reward dict has no 'overall' key "
                    f"(keys: {sorted(res)}; prompt {_short(inputs[i]['prompt'])!r})")
            value = res["overall"]
            for k, v in res.items():
                if k != "overall":
                    components.setdefault(k, np.full(n, np.nan))[i] = _as_float(v, i, k, inputs)
        else:
            value = res
        overall[i] = _as_float(value, i, "overall", inputs)
    correct_key = "correct" if "correct" in components else "accuracy"
    correct = components.get(correct_key, np.full(n, np.nan))
    return Scores(overall, correct, components)


def _as_float(value: Any, i: int, key: str, inputs: list[dict[str, Any]]) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as e:
        raise RewardContractError(
            f"sample {i}: reward '{key}' is {type(value).__name__}, expected a number "
            f"(prompt {_short(inputs[i]['prompt'])!r})") from e
    if not math.isfinite(out):
        raise RewardContractError(f"sample {i}: reward '{key}' is {out} (prompt "
                                  f"{_short(inputs[i]['prompt'])!r})")
    return out


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
