"""The metric catalog against what real runs log: two tiny `grpo run`s through the CLI (the
defaults with the probe; and dynamic sampling, a rollout correction, L1 budgets, GFPO, overlong
and stop penalties, KL and ZeRO-2 at once) must log no key in metrics.jsonl or the offline W&B
history that grpo_cli/telemetry/catalog.py lacks, and every catalog entry must show up in
them unless it needs what these CPU runs cannot do (listed below with the reason)."""

from __future__ import annotations

import subprocess

import pytest

from grpo_cli.telemetry.catalog import METRICS, match
from grpo_cli.telemetry.store import read_metrics
from grpo_cli.telemetry.wandb_files import find_run_file, read_wandb_history
from tests.helpers import REPO, TINY, cli_env, grpo_cmd

# One thread each: the two runs share the machine's cores side by side.
COMMON = [*TINY, "trainer.steps=2", "trainer.prompts_per_step=4", "trainer.num_threads=1",
          "logger.sample_every=1", "logger.wandb.mode=offline"]
RUNS = {
    # what a plain run logs, with the natural-length probe at every step
    "default": [*COMMON, "max_len=24", "trainer.val_every=1", "val.max_len=48"],
    # every optional family: dynamic/ (a cap that cuts whole groups, so some are dropped),
    # mismatch/ (tis), budget/ (l1_exact), gfpo/, the added reward terms, policy/kl,
    # train/grad_norm (DeepSpeed reports a norm from ZeRO stage 1 on)
    "controls": [*COMMON, "max_len=16", "trainer.val_every=0", "algorithm=dapo",
                 "algorithm.dynamic_sampling_max_rounds=2", "algorithm.rollout_correction=tis",
                 "length=l1_exact", "data.length_budget=[8,24]", "algorithm.gfpo_keep=2",
                 "length.overlong_buffer=4", "length.stop_penalty_value=-0.5",
                 "algorithm.kl_coef=0.01", "trainer.zero_stage=2"],
}

# Entries these runs cannot log here, and why.
NOT_HERE = {
    "perf/gpu_peak_gib": "torch's peak CUDA memory: only on GPUs, and these runs are on CPU",
}

Keys = dict[str, set[str]]  # where the key was seen -> keys


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Every key each run logged, per run and sink (``<run> metrics.jsonl``, ``<run> W&B``);
    W&B's own ``_step``/``_runtime``/``_timestamp`` left out."""
    runs = tmp_path_factory.mktemp("catalog_runs")
    procs = {name: subprocess.Popen(grpo_cmd("run", *args), cwd=REPO, env=cli_env(runs),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in RUNS.items()}
    out: Keys = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
        run_dir = runs / stdout.strip().splitlines()[-1]
        out[f"{name} metrics.jsonl"] = {k for row in read_metrics(run_dir) for k in row}
        history = read_wandb_history(find_run_file(run_dir))
        out[f"{name} W&B"] = {k for row in history.values() for k in row
                              if not k.startswith("_")}
    return out


def test_every_logged_key_is_in_the_catalog(logged: Keys) -> None:
    unmatched = {where: sorted(k for k in keys if match(k) is None)
                 for where, keys in logged.items()}
    assert all(keys for keys in logged.values())
    assert not any(unmatched.values()), f"logged but not in the catalog: {unmatched}"


def test_every_catalog_entry_is_logged_by_some_run(logged: Keys) -> None:
    seen = set().union(*logged.values())
    assert set(NOT_HERE) <= {m.name for m in METRICS}, "an exception names no entry"
    dead = [m.name for m in METRICS
            if m.name not in NOT_HERE and not any(m.matches(k) for k in seen)]
    assert dead == [], f"in the catalog but logged by none of the runs {list(RUNS)}"


def test_histograms_and_samples_stay_out_of_the_store(logged: Keys) -> None:
    """The entries marked W&B only are exactly the keys W&B has and metrics.jsonl lacks."""
    wandb_only = {m.name for m in METRICS if "W&B only" in m.when}
    for name in RUNS:
        stored, sent = logged[f"{name} metrics.jsonl"], logged[f"{name} W&B"]
        assert {_entry(k) for k in sent - stored} <= wandb_only, name
        assert not {_entry(k) for k in stored} & wandb_only, name


def _entry(key: str) -> str | None:
    m = match(key)
    return m.name if m is not None else None
