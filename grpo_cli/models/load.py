"""Load the policy's tokenizer and model (hub id, local HF directory, or the embedded toy)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from grpo_cli.config.schema import TOY, TOY_VL, ModelConfig
from grpo_cli.errors import ConfigError


def resolve_model_path(path: str, gguf_name: str | None = None) -> str:
    """An HF checkpoint dir (or hub id) for ``model.path``: the embedded toys, a GGUF file
    (converted once, see :mod:`grpo_cli.models.gguf`), a local dir or a hub id."""
    if path == TOY:
        from grpo_cli.models.toy import ensure_toy_model

        return str(ensure_toy_model())
    if path == TOY_VL:
        from grpo_cli.models.toy_vl import ensure_toy_vl_model

        return str(ensure_toy_vl_model())
    from grpo_cli.models.gguf import ensure_converted, gguf_file

    file = gguf_file(path, gguf_name)
    if file is not None:
        return str(ensure_converted(file))
    return str(Path(path).expanduser()) if Path(path).expanduser().exists() else path


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ConfigError(f"model.path={path}: cannot load tokenizer ({e})") from e
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def eos_token_ids(tokenizer: Any, path: str) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS plus generation_config's list.

    Models such as Qwen2.5-Instruct stop on several ids (<|im_end|>, <|endoftext|>); treating
    only one as EOS is how TRL misreports truncation (its issue #7039).
    """
    from transformers import GenerationConfig

    ids: list[int] = []
    try:
        gen = GenerationConfig.from_pretrained(path)
        eos = gen.eos_token_id
        ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    except (OSError, ValueError):
        pass
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    out = sorted(set(ids))
    if not out:
        raise ConfigError(f"model.path={path}: the tokenizer defines no EOS token")
    return out


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def vision_token_id(path: str, trust_remote_code: bool = False) -> int | None:
    """The image placeholder id if ``path`` is a vision-language model (its config has a
    ``vision_config``), else None: the model's config decides, not a user flag."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ConfigError(f"model.path={path}: cannot read the model config ({e})") from e
    if getattr(config, "vision_config", None) is None:
        return None
    return int(config.image_token_id)


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    """The VL model's processor (image processor + tokenizer + chat template)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ConfigError(f"model.path={path}: cannot load the processor ({e})") from e


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' own tqdm bars (e.g. "Loading weights") off for the duration; a download
    from the hub keeps its bar (huggingface_hub draws it)."""
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5
    if set_hook is None:
        yield
        return

    def quiet(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    previous = set_hook(quiet)
    try:
        yield
    finally:
        set_hook(previous)


def load_causal_lm(path: str, cfg: ModelConfig) -> torch.nn.Module:
    """Text models load as causal LMs, VL models (e.g. Qwen2.5-VL) as image-text-to-text;
    both return logits [B, L, V] for token ids."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if vision_token_id(path, cfg.trust_remote_code) \
        is not None else AutoModelForCausalLM
    try:
        with no_progress_bars():  # a bar over the tensors read: noise, not progress
            model = auto.from_pretrained(
                path, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
            )
    except Exception as e:
        raise ConfigError(f"model.path={path}: cannot load model ({e})") from e
    if cfg.gradient_checkpointing:  # recompute each layer in backward (train mode only)
        enable_checkpointing(model)
    disable_dropout(model)
    model.config.use_cache = True
    return model


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing, non-reentrant (gradients reach every layer whatever needs
    them): ``activation_checkpointing_enable`` from transformers 5.24, its older name before
    (the vLLM venv's 5.19)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability of the model to 0.

    The policy trains in train mode, which is where transformers checkpoints activations;
    without dropout that mode computes the same log-probs as the sampler's eval mode (the
    importance ratio is 1 at the sampling weights). Dropout lives in ``nn.Dropout`` modules,
    in float attributes that attention passes to its kernel (``attention_dropout``), and in
    configs read during the forward pass (``*dropout``, ``*_pdrop``)."""
    from transformers import PretrainedConfig

    def zero_rates(obj: object) -> None:
        for key, value in list(vars(obj).items()):
            if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float):
                setattr(obj, key, 0.0)

    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        zero_rates(module)
    configs = [getattr(model, "config", None)]
    while configs:
        config = configs.pop()
        if isinstance(config, PretrainedConfig):
            zero_rates(config)
            configs += vars(config).values()  # sub-configs (text_config, vision_config)
