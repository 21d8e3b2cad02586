"""Compose a run config: ``conf/`` defaults, then ``config=PATH``, then ``key=value`` overrides.

Hydra does the composition (so its override grammar, config groups and sweep syntax work as
documented); the result is merged once into the typed :class:`RunConfig`, which rejects
unknown keys and wrong types before any model is loaded.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from grpo_cli.config.keys import ALIASES, OPEN_DICTS, is_known, unknown_key_message
from grpo_cli.config.schema import RunConfig
from grpo_cli.errors import ConfigError

# A group name that conf/ never uses, so the copy (not a same-named packaged file) is found.
EXPERIMENT_GROUP = "grpo_user_experiment"


def conf_dir() -> Path:
    """The Hydra config tree: ``$GRPO_CONF_DIR`` or the repo's ``conf/``."""
    env = os.environ.get("GRPO_CONF_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"config tree not found at {path} (set GRPO_CONF_DIR to the conf/ dir)")
    return path


@dataclass
class ParsedArgs:
    overrides: list[str]  # Hydra overrides with aliases expanded
    experiment: Path | None  # the file named by config=PATH


_OVERRIDE_KEY = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[^=~+][^=]*)=(?P<value>.*)$", re.S)


def parse_args(args: list[str]) -> ParsedArgs:
    """Split ``config=PATH`` from the overrides, expand aliases (``max_len=``) and refuse
    keys the config does not have, naming the key meant.

    Keys under the free-form mappings (``reward.kwargs.format_weight=0.2``,
    ``reward.kwargs={format_weight: 0.2}``) are the user's own: they are added with Hydra's
    ``++`` so no ``+`` is needed.
    """
    overrides: list[str] = []
    experiment: Path | None = None
    for arg in args:
        m = _OVERRIDE_KEY.match(arg)
        if m is None:
            raise ConfigError(f"{arg!r}: expected key=value (e.g. max_len=1024, trainer.steps=10)")
        prefix, key, value = m["prefix"], m["key"].strip(), m["value"]
        if key == "config":
            experiment = Path(value).expanduser()
            if not experiment.is_file():
                raise ConfigError(f"config={value}: file not found")
            if experiment.suffix not in (".yaml", ".yml"):
                raise ConfigError(f"config={value}: expected a .yaml experiment file")
            continue
        key = ALIASES.get(key, key)
        if not is_known(key):
            raise ConfigError(unknown_key_message(key))
        if "~" not in prefix and (key in OPEN_DICTS or key.startswith(OPEN_DICTS)):
            prefix = "++"
        overrides.append(f"{prefix}{key}={value}")
    return ParsedArgs(overrides=overrides, experiment=experiment)


@contextmanager
def experiment_searchpath(experiment: Path | None) -> Iterator[list[str]]:
    """Expose ``config=PATH`` to Hydra as ``+experiment=<name>`` from a temporary search path.

    The group name is private, so a packaged conf/experiment/<name>.yaml never shadows it.
    Copying (not moving) the file keeps the user's file untouched; the experiment can then use
    Hydra's ``defaults: [override /algorithm: dapo]`` like any packaged experiment. The copy is
    marked ``# @package _global_`` so the file holds plain top-level keys and may open with a
    comment (the command that runs it).
    """
    if experiment is None:
        yield []
        return
    with tempfile.TemporaryDirectory(prefix="grpo-exp-") as tmp:
        group_dir = Path(tmp) / EXPERIMENT_GROUP
        group_dir.mkdir()
        name = re.sub(r"[^A-Za-z0-9_-]", "_", experiment.stem)
        text = read_experiment(experiment)
        (group_dir / f"{name}.yaml").write_text(f"# @package _global_\n{text}", encoding="utf-8")
        yield [f"hydra.searchpath=[file://{tmp}]", f"+{EXPERIMENT_GROUP}={name}"]


def read_experiment(path: Path) -> str:
    """The experiment file's text, checked to be a YAML mapping (errors name the user's file
    and line, not the temporary copy Hydra reads)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config={path}: cannot read: {e}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config={path}: not valid YAML at{where}: {problem}") from e
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config={path}: expected a mapping of keys (e.g. `trainer:` / "
                          f"`  steps: 10`), got a {type(data).__name__}")
    for key in _flat_keys(data or {}):
        if key != "defaults" and not is_known(key):
            raise ConfigError(f"config={path}: {unknown_key_message(key)}")
    return text


def _flat_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted leaf keys of a nested mapping; free-form mappings count as leaves."""
    out: list[str] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in OPEN_DICTS and key != "hydra":
            out += _flat_keys(v, key + ".")
        else:
            out.append(key)
    return out


def compose(args: list[str]) -> DictConfig:
    """Compose the raw (untyped) config for ``grpo run`` arguments."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException

    parsed = parse_args(args)
    with experiment_searchpath(parsed.experiment) as extra:
        try:
            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
                cfg = hydra_compose("config", overrides=extra + parsed.overrides)
        except OverrideParseException as e:
            raise ConfigError(override_syntax_message(e.override, e.message)) from e
        except (HydraException, OmegaConfBaseException) as e:
            msg = _one_line(str(e)).split(" Config search path:")[0]  # Hydra's internals
            if parsed.experiment is not None and extra:  # name the user's file, not the copy
                tmp = extra[0].removeprefix("hydra.searchpath=[file://").rstrip("]")
                msg = re.sub(re.escape(tmp) + r"\S*", str(parsed.experiment), msg)
            raise ConfigError(msg) from e
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    return cfg


def override_syntax_message(override: str, reason: str) -> str:
    """One line for an override Hydra's grammar cannot read, e.g. a prompt template
    ``data.prompt_template={problem} Answer:``: braces, spaces and colons are grammar there
    unless the value is quoted."""
    key, _, value = override.partition("=")
    why = _one_line(reason).split(" See https://")[0]
    why = why.replace(f"Error parsing override '{override}'", "").strip() or "parse error"
    if not value:
        return f"{override}: not a key=value override ({why})"
    return (f"{key}: the value {value!r} is not valid override syntax ({why}); quote it: "
            f"'{key}=\"{value}\"' (double quotes inside the shell's single quotes)")


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Merge a composed config into the typed schema; unknown keys and bad types fail here."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run_cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        if isinstance(e, ConfigKeyError) and key and not is_known(key):
            raise ConfigError(unknown_key_message(key)) from e
        msg = _one_line(str(e).split("\n")[0])
        raise ConfigError(f"{key}: {msg}" if key else msg) from e
    assert isinstance(run_cfg, RunConfig)
    return run_cfg


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
