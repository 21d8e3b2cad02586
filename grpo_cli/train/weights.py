"""The policy's full weights, one parameter at a time, under the names of its HF checkpoint.

Used to push the trained weights into a colocated vLLM engine after each optimiser step.
Under ZeRO-3 each parameter is gathered from its shards only while it is being consumed, so
no rank ever holds the whole model at once (a 7B model is 15 GB in bf16). Names are those
``save_pretrained`` would write: vLLM's ``load_weights`` reads checkpoint names (for
Qwen2.5-VL transformers 5 renames modules to ``model.language_model.*`` on load, while the
files, and vLLM, say ``model.*``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def checkpoint_names(model: torch.nn.Module) -> dict[str, str]:
    """Module parameter name -> the name ``save_pretrained`` writes for it.

    The model type's own renamings are reverted, not the ones recorded while loading: under
    ZeRO-3 (``HfDeepSpeedConfig``) loading records legacy renamings too, whose reverse turns
    ``model.language_model.x`` into ``model.model.x``.
    """
    from transformers.core_model_loading import revert_weight_conversion

    recorded = model.__dict__.get("_weight_conversions")
    model.__dict__["_weight_conversions"] = None  # use the model type's default mapping
    try:
        names: dict[str, str] = {}
        for name, _ in model.named_parameters():
            # Renamings only look at the key; a placeholder keeps ZeRO-3 shards untouched.
            (saved,) = revert_weight_conversion(model, {name: torch.empty(0)}).keys()
            names[name] = saved
    finally:
        if recorded is None:
            model.__dict__.pop("_weight_conversions", None)
        else:
            model.__dict__["_weight_conversions"] = recorded
    return names


def _gathered(param: torch.nn.Parameter, zero_stage: int) -> contextlib.AbstractContextManager:
    if zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param])


def iter_full_params(module: torch.nn.Module, zero_stage: int,
                     names: dict[str, str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(checkpoint name, full tensor)`` for every parameter, in module order.

    Under ZeRO-3 this is a collective: every rank must iterate to the end, in step. The tensor
    is valid only until the next item is requested (its gathered storage is then released),
    so the consumer copies it, as vLLM's ``load_weights`` does.
    """
    names = names if names is not None else checkpoint_names(module)
    for name, param in module.named_parameters():
        with _gathered(param, zero_stage):
            yield names[name], param.data


def weights_version(engine: Any) -> int:
    """Optimiser steps taken so far: the weights change only when this does."""
    return int(engine.global_steps)
