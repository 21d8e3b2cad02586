"""`grpo sweep`: one run per combination, launched through Hydra's multirun launchers.

The parent process plans the arms with Hydra's own sweeper logic (so ``a=1,2``, ``range()``,
``choice()`` and group globs mean what Hydra documents), writes the manifest, hands the
overrides to Hydra's ``--multirun`` (basic, joblib, submitit_local, submitit_slurm launchers),
and finally collects each arm's status into the manifest and a summary table.

Each arm is an ordinary run (its own store) whose id is ``<sweep-id>-<arm index>``; arms
report their status in ``arms/<index>.json`` so parallel arms never write the same file.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from grpo_cli.config.keys import shown
from grpo_cli.config.loader import (
    ConfigError,
    conf_dir,
    experiment_searchpath,
    parse_args,
    to_run_config,
)
from grpo_cli.config.schema import RunConfig
from grpo_cli.elastic import STOPPED_EXITS
from grpo_cli.errors import Terminated
from grpo_cli.launch import launch_command, needs_launch, start_ranks
from grpo_cli.telemetry.headline import final_means
from grpo_cli.telemetry.store import (
    atomic_write_text,
    read_metrics,
    resolve_run_dir,
    runs_root,
)

SWEEP_FILE_KEYS = {"config", "params", "overrides", "launcher", "n_jobs"}
# Launchers whose arms run as SLURM jobs: a multi-node arm meets at its job's first node.
SLURM_LAUNCHERS = ("hydra/launcher=slurm", "hydra/launcher=submitit_slurm")


@dataclass
class Arm:
    index: int
    overrides: list[str]  # the swept values of this arm, as the user wrote them
    run_id: str
    status: str = "pending"  # pending | running | completed | failed | interrupted


@dataclass
class SweepPlan:
    sweep_id: str
    sweep_dir: Path
    common: list[str]  # overrides shared by every arm (incl. launcher and config=)
    arms: list[Arm] = field(default_factory=list)


def new_sweep_id() -> str:
    from grpo_cli.telemetry.store import new_run_id

    return "sweep-" + new_run_id()


def expand_sweep_file(args: list[str]) -> list[str]:
    """``sweeps/x.yaml`` as first argument becomes the overrides it describes."""
    if not args or not args[0].endswith((".yaml", ".yml")) or "=" in args[0]:
        return args
    path = Path(args[0])
    if not path.is_file():
        raise ConfigError(f"{args[0]}: sweep file not found")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - SWEEP_FILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; allowed: "
                          f"{', '.join(sorted(SWEEP_FILE_KEYS))}")
    out: list[str] = []
    if spec.get("config"):
        out.append(f"config={spec['config']}")
    for key, values in (spec.get("params") or {}).items():
        vals = values if isinstance(values, str) else ",".join(str(v) for v in values)
        out.append(f"{key}={vals}")
    out += [str(o) for o in spec.get("overrides") or []]
    if spec.get("launcher"):
        out.append(f"hydra/launcher={spec['launcher']}")
    if spec.get("n_jobs"):
        out.append(f"hydra.launcher.n_jobs={spec['n_jobs']}")
    return out + args[1:]


def plan(args: list[str], sweep_id: str | None = None, runs_dir: str | None = None) -> SweepPlan:
    """Expand the sweep into arms exactly as Hydra's basic sweeper orders them."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = parse_args(expand_sweep_file(args))
    sweep_id = sweep_id or new_sweep_id()
    root = runs_root(runs_dir)
    hydra_args = [o for o in parsed.overrides if o.startswith(("hydra.", "hydra/"))]
    job_args = [o for o in parsed.overrides if o not in hydra_args]
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(conf_dir())))
    try:
        overrides = OverridesParser.create(config_loader=loader).parse_overrides(job_args)
        (batches,) = BasicSweeper.split_arguments(overrides, None)
    except HydraException as e:
        raise ConfigError(str(e).splitlines()[0]) from e
    swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
    common = [o for o in job_args if o.split("=", 1)[0].lstrip("+~") not in swept]
    if parsed.experiment is not None:
        common.insert(0, f"config={parsed.experiment}")
    sweep = SweepPlan(sweep_id, root / "sweeps" / sweep_id, common + hydra_args)
    for i, arm_overrides in enumerate(batches):
        mine = [o for o in arm_overrides if o.split("=", 1)[0] in swept]
        sweep.arms.append(Arm(i, mine, f"{sweep_id}-{i:03d}"))
    return sweep


def check_arms(sweep: SweepPlan) -> None:
    """Compose, type-check and validate every arm before any is launched (a typo or a bad
    value must not cost a queue slot per arm); the first bad arm is named in one line."""
    from grpo_cli.config.loader import compose
    from grpo_cli.config.validate import validate

    job_common = [o for o in sweep.common if not o.startswith(("hydra.", "hydra/"))]
    on_slurm = any(o in SLURM_LAUNCHERS for o in sweep.common)
    for i, arm in enumerate(sweep.arms):
        # the launcher's own overrides are checked once, with the first arm
        extra = [o for o in sweep.common if o.startswith("hydra/")] if i == 0 else []
        try:
            run_cfg = to_run_config(compose(job_common + arm.overrides + extra))
            t = run_cfg.trainer
            if on_slurm and t.nodes > 1 and not (t.master_addr or t.hostfile):
                t.master_addr = "slurm-head-node"  # each job's first node, known in the job
            validate(run_cfg)
        except ConfigError as e:
            where = shown_all(arm.overrides) or "no swept values"
            raise ConfigError(f"sweep arm {arm.index} ({where}): {e}; nothing was started") \
                from e


def write_manifest(sweep: SweepPlan, **extra: Any) -> None:
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    data = {"sweep_id": sweep.sweep_id, "common_overrides": sweep.common,
            "arms": [asdict(a) for a in sweep.arms], **extra}
    atomic_write_text(sweep.sweep_dir / "manifest.json", json.dumps(data, indent=2))


def read_manifest(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"sweep {sweep_dir.name}: no manifest at {path}")
    return json.loads(path.read_text())


def arm_status(sweep_dir: Path, index: int) -> dict[str, Any]:
    path = sweep_dir / "arms" / f"{index:03d}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ---- the Hydra task: runs in whatever process the launcher chose -------------------------


def _arm_task(cfg: DictConfig) -> str:
    """One arm. Failures are recorded, never raised, so the other arms carry on."""
    from hydra.core.hydra_config import HydraConfig

    from grpo_cli.config.validate import validate
    from grpo_cli.train.checkpoint import last_complete_step
    from grpo_cli.train.loop import train

    hc = HydraConfig.get()
    index = int(hc.job.num)
    sweep_dir = Path(os.environ["GRPO_SWEEP_DIR"])
    status_file = sweep_dir / "arms" / f"{index:03d}.json"
    status_file.parent.mkdir(parents=True, exist_ok=True)
    previous = arm_status(sweep_dir, index)
    if previous.get("status") == "completed":
        return "completed"  # --resume: never redo or overwrite a finished arm
    attempt = int(previous.get("attempt", -1)) + 1
    # An unfinished arm with a complete checkpoint continues in its own run; one without
    # starts over in a new run (-r<attempt>), leaving the old directory as it was.
    prior_id = previous.get("run_id")
    resume = bool(prior_id) and last_complete_step(
        sweep_dir.parent.parent / str(prior_id) / "checkpoints") is not None
    run_id = str(prior_id) if resume else (
        f"{sweep_dir.name}-{index:03d}" + (f"-r{attempt}" if attempt else ""))
    record = {"index": index, "run_id": run_id, "attempt": attempt, "resumed": resume,
              "overrides": list(hc.overrides.task), "status": "running"}
    atomic_write_text(status_file, json.dumps(record))
    keys = set(os.environ.get("GRPO_SWEEP_KEYS", "").split(","))
    own = [o for o in hc.overrides.task if o.split("=", 1)[0] in keys]
    print(f"grpo sweep: arm {index} ({shown_all(own) or 'no swept values'}) -> {run_id}"
          + (" (resumed)" if resume else ""), file=sys.stderr, flush=True)
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    plain.run_id = run_id
    threads = int(os.environ.get("GRPO_ARM_THREADS", "0"))
    if threads and not plain.trainer.num_threads:  # parallel arms share the CPU cores
        plain.trainer.num_threads = threads
    plain.resume = run_id if resume else None
    try:
        run_cfg = to_run_config(plain)
        t = run_cfg.trainer
        if t.nodes > 1 and not (t.master_addr or t.hostfile) and (head := job_head_node()):
            t.master_addr = plain.trainer.master_addr = head  # the SLURM job's first node
        validate(run_cfg)
        if needs_launch(run_cfg.trainer, os.environ):  # several GPUs or nodes: start ranks
            launch_arm(run_cfg, plain, sweep_dir / "arms" / f"{index:03d}.yaml")
            if node_rank() != 0:  # the job's other nodes joined; the first one records
                return "joined"
        else:
            train(run_cfg, OmegaConf.structured(run_cfg))
        record["status"] = "completed"
    except (KeyboardInterrupt, Terminated):  # Ctrl-C or SIGTERM: the arm saved its step
        record["status"] = "interrupted"
        atomic_write_text(status_file, json.dumps(record))
        if in_sweep_process():
            raise  # the sweep itself was signalled: it ends here
        return "interrupted"  # a launcher's job was (preempted): the other arms carry on
    except BaseException as e:  # one failing arm must not stop the others
        record.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
    atomic_write_text(status_file, json.dumps(record))
    return str(record["status"])


def in_sweep_process() -> bool:
    """Whether this arm runs inside `grpo sweep` itself (the basic launcher), not in a job
    process of its own (joblib, submitit)."""
    return os.environ.get("GRPO_SWEEP_PID") == str(os.getpid())


def node_rank() -> int:
    """This node's index within a multi-node job (SLURM), 0 elsewhere."""
    return int(os.environ.get("SLURM_NODEID", "0"))


def job_head_node() -> str | None:
    """The first host of the SLURM job this task runs in, as submitit sees it."""
    try:
        import submitit

        return str(submitit.JobEnvironment().hostnames[0])
    except (ImportError, RuntimeError, KeyError, IndexError):
        return None


def launch_arm(run_cfg: RunConfig, plain: DictConfig, arm_file: Path) -> None:
    """Run one arm as `grpo run config=ARM.yaml` under the launcher (every node does this;
    torchrun's rendezvous at the job's first node, filled in by the arm task, joins them)."""
    atomic_write_text(arm_file, OmegaConf.to_yaml(plain))
    run_dir = resolve_run_dir(runs_root(run_cfg.runs_dir), str(plain.run_id))
    code, reason = start_ranks(launch_command(run_cfg.trainer, [f"config={arm_file}"],
                                              str(plain.run_id)), run_dir)
    if code in STOPPED_EXITS:  # a signal stopped the ranks after a step (and saved it)
        raise Terminated(f"the ranks stopped on a signal (exit {code})")
    if code != 0:
        raise RuntimeError(reason)


def arm_threads(overrides: list[str], arms: int, cpus: int | None = None) -> int:
    """Torch threads per arm when arms share this host's CPU (joblib): cores / parallel arms.

    Every torch process otherwise starts one thread per core, so two parallel arms on two
    cores would run four busy threads. 0 leaves torch's default (sequential arms, clusters,
    or trainer.num_threads set by the user).
    """
    if "hydra/launcher=joblib" not in overrides:
        return 0
    cpus = cpus or os.cpu_count() or 1
    n_jobs = next((int(o.split("=", 1)[1]) for o in overrides
                   if o.startswith("hydra.launcher.n_jobs=")), -1)
    parallel = min(arms, cpus if n_jobs <= 0 else n_jobs)
    return max(1, cpus // max(1, parallel))


def launch(sweep: SweepPlan) -> None:
    """Hand the sweep to Hydra's multirun with the chosen launcher."""
    import hydra

    parsed = parse_args(sweep.common)
    swept: dict[str, list[str]] = {}
    for arm in sweep.arms:
        for o in arm.overrides:
            key, value = o.split("=", 1)
            if value not in swept.setdefault(key, []):
                swept[key].append(value)
    sweep_args = [f"{k}={','.join(v)}" for k, v in swept.items()]
    os.environ["GRPO_SWEEP_DIR"] = str(sweep.sweep_dir)
    os.environ["GRPO_SWEEP_PID"] = str(os.getpid())
    os.environ["GRPO_ARM_THREADS"] = str(arm_threads(parsed.overrides, len(sweep.arms)))
    os.environ["GRPO_SWEEP_KEYS"] = ",".join(swept)  # what each arm's start line shows
    # Hydra's own INFO lines ("[HYDRA] Launching 6 jobs locally", joblib's settings) say
    # nothing the arm lines below do not; a user's hydra/hydra_logging choice wins.
    quiet = [] if any(o.startswith("hydra/hydra_logging=") for o in parsed.overrides) \
        else ["hydra/hydra_logging=disabled"]
    task = hydra.main(config_path=str(conf_dir()), config_name="config",
                      version_base="1.3")(_arm_task)
    with experiment_searchpath(parsed.experiment) as extra:
        argv = [
            "grpo-sweep", "--multirun", *extra, *quiet, *parsed.overrides, *sweep_args,
            f"sweep_id={sweep.sweep_id}",
            f"runs_dir={sweep.sweep_dir.parent.parent}",
            f"hydra.sweep.dir={sweep.sweep_dir / 'hydra'}",
            "hydra.job.chdir=false",
        ]
        saved = sys.argv
        sys.argv = argv
        try:
            task()
        finally:
            sys.argv = saved


def summarize(sweep: SweepPlan) -> list[dict[str, Any]]:
    """Collect arm statuses and headline numbers (mean over the last 10% of steps)."""
    rows = []
    for arm in sweep.arms:
        st = arm_status(sweep.sweep_dir, arm.index)
        arm.status = st.get("status", "pending")
        arm.run_id = st.get("run_id", arm.run_id)
        row: dict[str, Any] = {"arm": arm.index, "overrides": shown_all(arm.overrides),
                               "status": arm.status, "run_id": arm.run_id}
        run_dir = sweep.sweep_dir.parent.parent / arm.run_id
        metrics = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
        if metrics:
            row.update(final_means(metrics))
            row["steps"] = len(metrics)
        if st.get("error"):
            row["error"] = st["error"]
        rows.append(row)
    return rows


def shown_all(overrides: list[str]) -> str:
    """Overrides as printed: space-separated, keys under their short names (max_len)."""
    return " ".join(shown(o) for o in overrides)


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = ["arm", "overrides", "status", "steps", "len", "clip", "reward", "run_id"]
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    table = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)) for t in table]
    return "\n".join(lines)


def run_sweep(args: list[str], dry_run: bool = False, resume: str | None = None) -> int:
    """Plan, launch and summarise; returns the exit code (non-zero if any arm failed)."""
    sweep = plan(args, sweep_id=resume)
    if resume:
        prior = read_manifest(sweep.sweep_dir)
        if [a["overrides"] for a in prior["arms"]] != [a.overrides for a in sweep.arms]:
            raise ConfigError(f"--resume {resume}: the arms differ from the original sweep; "
                              "repeat the original command's overrides")
    check_arms(sweep)
    if dry_run:
        print(f"sweep {sweep.sweep_id}: {len(sweep.arms)} arms, each config checked (dry run, "
              "nothing started)")
        print(f"common: {shown_all(sweep.common) or '-'}")
        for arm in sweep.arms:
            print(f"  [{arm.index:03d}] {shown_all(arm.overrides) or '-':40s} "
                  f"-> {sweep.sweep_dir.parent.parent / arm.run_id}")
        return 0
    start = time.time()
    write_manifest(sweep, status="running", start_time=start)
    try:
        launch(sweep)
    except BaseException as e:  # the manifest must not say "running" for a sweep that ended
        rows = summarize(sweep)
        stopped = isinstance(e, KeyboardInterrupt | Terminated) or any(
            r["status"] == "interrupted" for r in rows)
        write_manifest(sweep, status="interrupted" if stopped else "failed", start_time=start,
                       end_time=time.time(), error=f"{type(e).__name__}: {e}"[:2000])
        raise
    rows = summarize(sweep)
    failed = [r for r in rows if r["status"] != "completed"]
    interrupted = any(r["status"] == "interrupted" for r in rows)
    status = "completed" if not failed else "interrupted" if interrupted else "failed"
    write_manifest(sweep, status=status, start_time=start, end_time=time.time())
    print(f"sweep {sweep.sweep_id}: {len(rows) - len(failed)}/{len(rows)} arms completed")
    print(format_table(rows))
    for r in failed:
        why = r.get("error", "") if r["status"] != "interrupted" else \
            "stopped by a signal after saving its last step"
        print(f"arm {r['arm']} {r['status']}: {why}", file=sys.stderr)
    if interrupted:
        again = shlex.join(["grpo", "sweep", "--resume", sweep.sweep_id, *args])
        print(f"continue with: {again}", file=sys.stderr)
    if len(failed) < len(rows):
        print(f"next: grpo report {sweep.sweep_id}  (the arms compared over seeds, figures "
              "and a diagnosis)", file=sys.stderr)
    return 1 if failed else 0
