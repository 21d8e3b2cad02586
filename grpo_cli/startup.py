"""From the command line to a validated run config: compose it (or reload the saved config
of a run being resumed), type-check it, validate it. This sits above the pieces it uses
(the loader, the validator, the run store, checkpoints), so none of them import it."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grpo_cli.config.loader import compose, parse_args, to_run_config
from grpo_cli.config.schema import RunConfig
from grpo_cli.config.validate import validate
from grpo_cli.errors import ConfigError

# What may change when a run is resumed: how long it runs and how it reports, nothing that
# would make the continued run a different experiment.
RESUME_MUTABLE = ("trainer.steps", "logger.", "runs_dir")


def resume_config(args: list[str]) -> DictConfig:
    """``resume=<run-id> [trainer.steps=N] [logger.*=...]``: the run's own saved config.

    Fails before anything loads when the run is unknown, the id escapes the runs root, other
    keys are overridden, or the run has no complete checkpoint to continue from.
    """
    # Only resuming reads the run store: pandas/pyarrow stay out of every other config check.
    from grpo_cli.telemetry.store import resolve_run_dir, runs_root
    from grpo_cli.train.checkpoint import last_complete_step

    run_id = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    rest = parse_args([a for a in args if not a.startswith("resume=")])
    if rest.experiment is not None:
        raise ConfigError("resume= continues a run with its own config; drop config=")
    for o in rest.overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if not key.startswith(RESUME_MUTABLE):
            raise ConfigError(f"resume={run_id}: {key} cannot change when resuming (allowed: "
                              "trainer.steps, logger.*, runs_dir)")
    dotlist = [o.lstrip("+") for o in rest.overrides]
    runs_dir = OmegaConf.from_dotlist(dotlist).get("runs_dir")
    root = runs_root(runs_dir)
    try:
        run_dir = resolve_run_dir(root, run_id)
    except ValueError as e:
        raise ConfigError(f"resume={run_id}: {e}") from None
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"resume={run_id}: no run with that id under {root}")
    try:
        saved = OmegaConf.load(run_dir / "config.yaml")
    except (OSError, OmegaConfBaseException) as e:
        raise ConfigError(f"resume={run_id}: unreadable {run_dir / 'config.yaml'}: {e}") from e
    assert isinstance(saved, DictConfig)
    if last_complete_step(run_dir / "checkpoints") is None:
        raise ConfigError(f"resume={run_id}: no complete checkpoint in {run_dir / 'checkpoints'}"
                          " (runs save one every trainer.save_every steps, and when stopped "
                          "by Ctrl-C or SIGTERM with trainer.save_on_interrupt=true, the "
                          "default)")
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(dotlist))
    merged.resume, merged.run_id = run_id, run_id
    return merged


def load_run_config(args: list[str]) -> tuple[RunConfig, DictConfig]:
    """Compose, type-check and validate; returns the typed config and the resolved tree."""
    raw = resume_config(args) if any(a.startswith("resume=") for a in args) else compose(args)
    run_cfg = to_run_config(raw)
    validate(run_cfg)
    resolved = OmegaConf.structured(run_cfg)
    return run_cfg, resolved
