"""Sampling backends behind one interface (see :mod:`grpo_cli.rollout.base`)."""

from __future__ import annotations

import importlib.util


def vllm_available() -> bool:
    """vLLM is an optional extra and needs a CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()
