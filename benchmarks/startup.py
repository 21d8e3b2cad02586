"""Start-up of `grpo run`: where the time before step 0 goes, and `grpo run --cfg job`.

Every measured run is a fresh process through the CLI's own entry point (`grpo_cli.cli.main`,
what the `grpo` script calls) running `grpo run trainer.steps=1` on the default toy run, W&B
offline, with an empty TORCH_EXTENSIONS_DIR: what a fresh machine has, so a C++ op that
DeepSpeed compiled on the way would show up in the time and in that directory (listed under
the table). The child marks these moments, in seconds since the parent started it:

    cli      `grpo_cli.cli` imported (the interpreter included; every `grpo` command pays it)
    config   the config composed, type-checked and validated (`grpo run --cfg job` stops here)
    imports  the training modules imported (torch, transformers, the loop)
    dist     the process group joined (DeepSpeed imported, `init_distributed`)
    inputs   tokenizer, prompts and reward loaded
    run      run directory and sinks open (W&B init)
    engine   model loaded, DeepSpeed engine and sampler built: ready for step 0
    step 0   step 0's records written
    exit     the process ended (the parent's clock: W&B finish and teardown included)

`grpo run --cfg job` (compose, check and print the config) is timed on its own, end to end.

    .venv/bin/python benchmarks/startup.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

RUN = ["trainer.steps=1", "logger.wandb.mode=offline"]
# (mark, what the time since the previous mark went to)
PHASES = (("cli", "interpreter + `grpo_cli.cli` import"),
          ("config", "config compose + check"),
          ("imports", "training imports (torch, transformers, loop)"),
          ("dist", "process group (DeepSpeed import + init_distributed)"),
          ("inputs", "inputs (tokenizer, prompts, reward)"),
          ("run", "run directory + sinks (W&B init)"),
          ("engine", "model load + DeepSpeed engine + sampler"),
          ("step 0", "step 0 (validation probe, sampling, update, records)"),
          ("exit", "exit (W&B finish, teardown)"))


def child(overrides: list[str]) -> None:
    """Run `grpo run OVERRIDES` here, marking the phases; print them as one JSON line."""
    spawned = float(os.environ["GRPO_BENCH_SPAWNED"])
    marks: dict[str, float] = {}
    import grpo_cli.cli as cli

    marks["cli"] = time.time()
    import grpo_cli.startup as startup

    load_run_config = startup.load_run_config

    def timed_config(args: list[str]) -> Any:
        out = load_run_config(args)
        marks["config"] = time.time()
        instrument_training(marks)
        return out

    startup.load_run_config = timed_config  # benchmark instrumentation, not product code
    sys.argv = ["grpo", "run", *overrides]
    try:
        cli.main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    print(json.dumps({k: v - spawned for k, v in marks.items()}))


def instrument_training(marks: dict[str, float]) -> None:
    """Import the loop (the CLI does so right after the config) and mark its phases."""
    import grpo_cli.train.loop as loop
    from grpo_cli.telemetry import run as run_module
    from grpo_cli.train import engine

    marks["imports"] = time.time()

    def mark_after(module: Any, name: str, mark: str) -> None:
        fn = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            marks.setdefault(mark, time.time())
            return out

        setattr(module, name, timed)

    mark_after(engine, "init_distributed", "dist")
    mark_after(loop, "load_inputs", "inputs")
    mark_after(loop, "open_run", "run")
    mark_after(loop, "build_models", "engine")
    mark_after(run_module.RunHandle, "log", "step 0")


def timed_child(args: list[str], env: dict[str, str]) -> tuple[dict[str, float], list[str]]:
    """One measured `grpo run` in a fresh process: its marks and the ops it compiled."""
    with tempfile.TemporaryDirectory() as tmp:
        ext = Path(tmp) / "torch_extensions"
        env = dict(env, GRPO_RUNS_DIR=str(Path(tmp) / "runs"), TORCH_EXTENSIONS_DIR=str(ext))
        start = time.time()
        env["GRPO_BENCH_SPAWNED"] = repr(start)
        res = subprocess.run([sys.executable, str(Path(__file__)), "--child", *args], env=env,
                             cwd=REPO, capture_output=True, text=True)
        end = time.time()
        if res.returncode != 0:
            raise SystemExit(f"startup.py --child {' '.join(args)} failed:\n{res.stderr[-3000:]}")
        marks = json.loads(res.stdout.strip().splitlines()[-1])
        marks["exit"] = end - start
        compiled = sorted({p.parent.name for p in ext.rglob("*.so")})
    return marks, compiled


def cfg_job_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "grpo_cli", "run", "--cfg", "job"], env=env, cwd=REPO,
                   check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args()
    if a.child:
        child(rest)
        return
    env = dict(os.environ, WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    runs: list[dict[str, float]] = []
    compiled: set[str] = set()
    cfg_job: list[float] = []
    for _ in range(a.repeats):  # alternating, so machine drift hits both
        marks, ops = timed_child([*RUN, *rest], env)
        runs.append(marks)
        compiled.update(ops)
        cfg_job.append(cfg_job_seconds(env))

    def median_of(mark: str) -> float:
        return statistics.median(m[mark] for m in runs)

    print(f"\n### Start-up of `grpo run` ({a.repeats} fresh processes, `trainer.steps=1`, "
          f"empty TORCH_EXTENSIONS_DIR, {os.cpu_count()} CPU cores)\n")
    print("| phase | s (median) | min-max | since start (median) |")
    print("| --- | ---: | ---: | ---: |")
    previous = [0.0] * len(runs)
    for mark, label in PHASES:
        took = [m[mark] - p for m, p in zip(runs, previous, strict=True)]
        print(f"| {label} | {statistics.median(took):.2f} | {min(took):.2f}-{max(took):.2f} "
              f"| {median_of(mark):.2f} |")
        previous = [m[mark] for m in runs]
        if mark == "engine":
            print(f"| **ready for step 0** | | | **{median_of(mark):.2f}** |")
    print(f"\nC++ ops compiled on the way: {', '.join(sorted(compiled)) or 'none'}.")
    print(f"\n`grpo run --cfg job` end to end: {statistics.median(cfg_job):.2f} s (median of "
          f"{len(cfg_job)}, {min(cfg_job):.2f}-{max(cfg_job):.2f}).")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
