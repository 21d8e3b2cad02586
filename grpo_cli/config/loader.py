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
from omegaconf.errors import OmegaConfBaseException

from grpo_cli.config.schema import RunConfig
from grpo_cli.errors import ConfigError

# Short names users type; rewritten to the full key before Hydra sees them.
ALIASES: dict[str, str] = {"max_len": "data.max_response_length"}

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
    """Split ``config=PATH`` from the overrides and expand aliases (``max_len=``)."""
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
        text = experiment.read_text(encoding="utf-8")
        (group_dir / f"{name}.yaml").write_text(f"# @package _global_\n{text}", encoding="utf-8")
        yield [f"hydra.searchpath=[file://{tmp}]", f"+{EXPERIMENT_GROUP}={name}"]


def compose(args: list[str]) -> DictConfig:
    """Compose the raw (untyped) config for ``grpo run`` arguments."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    parsed = parse_args(args)
    with experiment_searchpath(parsed.experiment) as extra:
        try:
            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
                cfg = hydra_compose("config", overrides=extra + parsed.overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(_one_line(str(e))) from e
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    return cfg


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Merge a composed config into the typed schema; unknown keys and bad types fail here."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        run_cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        msg = _one_line(str(e).split("\n")[0])
        raise ConfigError(f"{key}: {msg}" if key else msg) from e
    assert isinstance(run_cfg, RunConfig)
    return run_cfg


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
