"""Which keys a run config has, and help for the ones it does not: the nearest real key for a
typo, this project's key for a name typed from EasyR1 / veRL / TRL habit.

Checked on the command line before Hydra composes anything, so a typo gets one line that
names the key to use instead of Hydra's "To append to your config use +key" advice.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import cache
from typing import Any, get_type_hints

from grpo_cli.config.schema import RunConfig

# Short names users type, and other frameworks' names for a key that means exactly the same;
# rewritten to the full key before Hydra sees them.
ALIASES: dict[str, str] = {
    "max_len": "data.max_response_length",
    # EasyR1 online filtering (algorithm.*) and veRL's DAPO filter_groups
    "algorithm.online_filtering": "algorithm.dynamic_sampling",
    "algorithm.filter_key": "algorithm.dynamic_sampling_key",
    "algorithm.filter_low": "algorithm.dynamic_sampling_low",
    "algorithm.filter_high": "algorithm.dynamic_sampling_high",
    "trainer.max_try_make_batch": "algorithm.dynamic_sampling_max_rounds",
    "algorithm.filter_groups.enable": "algorithm.dynamic_sampling",
    "algorithm.filter_groups.max_num_gen_batches": "algorithm.dynamic_sampling_max_rounds",
    # veRL's algorithm.rollout_correction block and TRL's vLLM importance sampling
    "algorithm.rollout_correction.rollout_is_threshold": "algorithm.rollout_correction_cap",
    "algorithm.rollout_correction.rollout_rs_threshold_lower": "algorithm.rollout_correction_low",
    "algorithm.rollout_correction.rollout_rs_threshold": "algorithm.rollout_correction_high",
    "vllm_importance_sampling_cap": "algorithm.rollout_correction_cap",
}

# The short name printed for a key wherever a key=value is shown (sweep tables, reports).
SHORT_NAMES: dict[str, str] = {"data.max_response_length": "max_len"}


def shown(override: str) -> str:
    """``key=value`` under the key's short name: data.max_response_length=32 -> max_len=32."""
    key, sep, value = override.partition("=")
    return f"{SHORT_NAMES.get(key, key)}{sep}{value}"


# Free-form mappings: any key below them is the user's (reward kwargs, component weights,
# DeepSpeed config entries).
OPEN_DICTS = ("reward.kwargs", "reward.weights", "trainer.deepspeed")

# Config groups (conf/<group>/<option>.yaml), selected with e.g. `algorithm=dapo`.
GROUPS = ("model", "data", "rollout", "algorithm", "reward", "length", "trainer", "logger")

# Names from other frameworks' configs -> the key here (or what to do instead).
FOREIGN: dict[str, str] = {
    # EasyR1 (examples/config.yaml) and veRL (ppo_trainer.yaml)
    "data.rollout_batch_size": "trainer.prompts_per_step",
    "data.train_batch_size": "trainer.prompts_per_step",
    "data.seed": "seed",
    "worker.rollout.n": "rollout.n",
    "worker.rollout.temperature": "rollout.temperature",
    "worker.rollout.top_p": "rollout.top_p",
    "worker.rollout.gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "worker.rollout.tensor_parallel_size": "rollout.tensor_parallel_size",
    "worker.actor.global_batch_size": "trainer.updates_per_batch (optimiser steps per rollout "
                                      "batch = prompts_per_step / global_batch_size)",
    "worker.actor.micro_batch_size_per_device_for_update": "trainer.micro_batch_size",
    "worker.actor.micro_batch_size_per_device_for_experience": "trainer.micro_batch_size",
    "worker.actor.max_grad_norm": "trainer.grad_clip",
    "worker.actor.optim.lr": "trainer.lr",
    "worker.actor.optim.weight_decay": "trainer.weight_decay",
    "worker.actor.model.model_path": "model.path",
    "worker.actor.clip_ratio_low": "algorithm.clip_ratio_low",
    "worker.actor.clip_ratio_high": "algorithm.clip_ratio_high",
    "worker.actor.loss_avg_mode": "algorithm.loss_agg_mode",
    "worker.reward.reward_function": "reward.function",
    "algorithm.kl_penalty": "algorithm.kl_coef (k3 KL to the initial policy)",
    "algorithm.use_kl_loss": "algorithm.kl_coef (0 disables KL)",
    "algorithm.kl_loss_coef": "algorithm.kl_coef",
    "actor_rollout_ref.rollout.n": "rollout.n",
    "actor_rollout_ref.rollout.temperature": "rollout.temperature",
    "actor_rollout_ref.rollout.response_length": "max_len",
    "actor_rollout_ref.model.path": "model.path",
    "actor_rollout_ref.actor.optim.lr": "trainer.lr",
    "actor_rollout_ref.actor.ppo_mini_batch_size": "trainer.updates_per_batch (optimiser steps "
                                                   "per rollout batch)",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "actor_rollout_ref.actor.loss_agg_mode": "algorithm.loss_agg_mode",
    "actor_rollout_ref.actor.kl_loss_coef": "algorithm.kl_coef",
    "actor_rollout_ref.actor.clip_ratio_low": "algorithm.clip_ratio_low",
    "actor_rollout_ref.actor.clip_ratio_high": "algorithm.clip_ratio_high",
    "custom_reward_function.path": "reward.function (path/to/file.py:fn)",
    "trainer.total_epochs": "trainer.steps",
    "trainer.total_training_steps": "trainer.steps",
    "trainer.max_steps": "trainer.steps",
    "trainer.save_freq": "trainer.save_every",
    "trainer.val_freq": "trainer.val_every",
    "trainer.test_freq": "trainer.val_every",
    "trainer.n_gpus_per_node": "trainer.gpus",
    "trainer.nnodes": "trainer.nodes",
    "trainer.experiment_name": "name",
    "trainer.project_name": "logger.wandb.project",
    "trainer.logger": "logger.wandb.mode",
    "trainer.seed": "seed",
    "trainer.save_checkpoint_path": "runs_dir",
    "trainer.load_checkpoint_path": "resume=<run-id>",
    "algorithm.filter_groups.metric": "algorithm.dynamic_sampling_key (reward, or a reward "
                                      "component such as accuracy)",
    "algorithm.rollout_correction.rollout_is": "algorithm.rollout_correction=tis (token-level "
                                               "truncated importance sampling)",
    "algorithm.rollout_correction.rollout_rs": "algorithm.rollout_correction=icepop (token "
                                               "band) or seq_mask (geometric-mean band)",
    # TRL GRPOConfig
    "vllm_importance_sampling_correction": "algorithm.rollout_correction=tis (or icepop, "
                                           "seq_mask; none disables)",
    "vllm_importance_sampling_mode": "algorithm.rollout_correction (token_truncate: tis, "
                                     "token_mask: icepop, sequence_mask: seq_mask)",
    "num_generations": "rollout.n",
    "max_completion_length": "max_len",
    "max_prompt_length": "data.max_prompt_length",
    "learning_rate": "trainer.lr",
    "max_steps": "trainer.steps",
    "beta": "algorithm.kl_coef",
    "epsilon": "algorithm.clip_ratio_low",
    "epsilon_high": "algorithm.clip_ratio_high",
    "temperature": "rollout.temperature",
    "loss_type": "algorithm.loss_agg_mode",
}


@cache
def config_keys() -> frozenset[str]:
    """Every dotted key of :class:`RunConfig`, sections included (``trainer``, ``trainer.lr``)."""
    keys: set[str] = set()

    def walk(cls: Any, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            keys.add(key)
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], key + ".")

    walk(RunConfig, "")
    return frozenset(keys)


def is_known(key: str) -> bool:
    """Whether ``key`` (aliases expanded, no ``+``/``~`` prefix) names a config entry."""
    if key in config_keys() or key in ALIASES or key == "hydra" or key.startswith(("hydra.",
                                                                                   "hydra/")):
        return True
    return any(key.startswith(d + ".") for d in OPEN_DICTS)


def unknown_key_message(key: str) -> str:
    """One line for a key the config does not have: the key to use, else the nearest ones."""
    if key in FOREIGN:
        return f"{key}: not a key here; use {FOREIGN[key]}"
    suffix = next((v for k, v in FOREIGN.items() if "." in k and key.endswith("." + k)), None)
    if suffix:
        return f"{key}: not a key here; use {suffix}"
    keys = config_keys()
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    candidates = sorted((keys - sections) | set(ALIASES))
    close = _nearest(key, candidates, 0.75)
    if not close:  # a right name in the wrong section: trainer.temperature -> rollout.temperature
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in candidates if k.rsplit(".", 1)[-1] == leaf][:3]
    if not close:
        close = _nearest(key, candidates, 0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return (f"{key}: no such config key{hint} (grpo run --cfg job lists them; "
            "grpo run --help has the most used)")


def _nearest(key: str, candidates: list[str], cutoff: float) -> list[str]:
    """The closest candidates: the best match and any as close as it (within 0.05)."""
    scored = sorted(((difflib.SequenceMatcher(None, key, c).ratio(), c) for c in candidates),
                    reverse=True)
    best = scored[0][0] if scored else 0.0
    return [c for r, c in scored[:3] if r >= cutoff and r >= best - 0.05]
