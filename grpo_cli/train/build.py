"""What a run builds before step 0: the user's inputs (checked first, so bad data or a
reward that does not import fails before a model loads), the DeepSpeed engines and the
sampling backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grpo_cli.config.schema import RunConfig
from grpo_cli.config.validate import response_caps, val_cap
from grpo_cli.data.datasets import PromptSet, build_prompts, load_rows
from grpo_cli.models.load import (
    eos_token_ids,
    load_causal_lm,
    load_processor,
    load_tokenizer,
    resolve_model_path,
    vision_token_id,
)
from grpo_cli.rewards.loader import RewardFn, load_reward_fn
from grpo_cli.rollout.base import RolloutBackend
from grpo_cli.rollout.hf import HFRollout
from grpo_cli.telemetry.run import RunHandle
from grpo_cli.train import engine as eng


def load_val_prompts(cfg: RunConfig, tokenizer: Any, processor: Any,
                     d: eng.Dist) -> PromptSet | None:
    if cfg.trainer.val_every <= 0:
        return None
    spec = cfg.data.val_files or cfg.data.train_files
    if spec.startswith("toy:") and not cfg.data.val_files:
        rows = load_rows(spec, cfg.data, seed=cfg.seed + 1_000_003)  # a stream training never sees
    else:
        rows = load_rows(spec, cfg.data, seed=cfg.seed, key="data.val_files")
    k = max(d.world, cfg.val.num_prompts // d.world * d.world)
    val = build_prompts(rows[: k * 2], cfg.data, tokenizer, processor, spec,  # spare rows
                        key="data.val_files" if cfg.data.val_files else "data.train_files",
                        seed=cfg.seed)
    val.prompt_ids, val.rows, val.texts = val.prompt_ids[:k], val.rows[:k], val.texts[:k]
    val.budgets = val.budgets[:k] if val.budgets is not None else None
    return val


@dataclass
class Inputs:
    """What the run reads from the user before it starts: bad data or a reward that does not
    import fails here, before a run directory or a model exists."""

    model_path: str
    tokenizer: Any
    prompts: PromptSet
    val_prompts: PromptSet | None
    reward_fn: RewardFn
    image_token_id: int | None  # set for vision-language models (chosen by the model config)


def load_inputs(cfg: RunConfig, d: eng.Dist) -> Inputs:
    model_path = resolve_model_path(cfg.model.path, cfg.model.gguf_file)
    if cfg.model.warm_start.data is not None:  # fine-tuned once on worked solutions, cached
        from grpo_cli.models.warm_start import ensure_warm_started

        model_path = str(ensure_warm_started(model_path, cfg.model.warm_start, cfg.data))
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    image_token = vision_token_id(model_path, cfg.model.trust_remote_code)
    processor = load_processor(model_path, cfg.model.trust_remote_code) \
        if image_token is not None else None
    reward_fn = load_reward_fn(cfg.reward.function, dict(cfg.reward.kwargs))
    prompts = build_prompts(load_rows(cfg.data.train_files, cfg.data, seed=cfg.seed), cfg.data,
                            tokenizer, processor, cfg.data.train_files, seed=cfg.seed)
    return Inputs(model_path, tokenizer, prompts, load_val_prompts(cfg, tokenizer, processor, d),
                  reward_fn, image_token)


def make_rollout(cfg: RunConfig, policy: Any, inputs: Inputs, d: eng.Dist,
                 run: RunHandle) -> RolloutBackend:
    """The sampling engine the config names; never a silent fallback to another one."""
    r, t = cfg.rollout, cfg.trainer
    eos = eos_token_ids(inputs.tokenizer, inputs.model_path)
    if r.backend == "hf":
        return HFRollout(lambda: eng.gathered(policy, t.zero_stage),
                         inputs.tokenizer.pad_token_id, eos, micro_batch_size=r.micro_batch_size,
                         image_token_id=inputs.image_token_id, drop_finished=r.drop_finished)
    from grpo_cli.rollout import vllm_platform
    from grpo_cli.rollout.vllm import VLLMRollout, engine_settings, kv_bytes_per_token
    from grpo_cli.train.weights import checkpoint_names, iter_full_params, weights_version

    names = checkpoint_names(policy.module)
    sizes = {k: v for k, v in (("min_pixels", cfg.data.min_pixels),
                               ("max_pixels", cfg.data.max_pixels)) if v}
    longest = cfg.data.max_prompt_length + max([*response_caps(cfg), val_cap(cfg)])
    # the most sequences one engine samples at once: a step's, or the validation probe's
    sequences = r.tensor_parallel_size * max(
        t.prompts_per_step // d.world * r.n,
        cfg.val.num_prompts // d.world * cfg.val.n if t.val_every > 0 else 0)
    platform = vllm_platform()
    assert platform is not None  # validated at start-up
    settings = engine_settings(
        platform, sequences=sequences, max_model_len=longest,
        bytes_per_token=kv_bytes_per_token(inputs.model_path, cfg.model.dtype),
        gpu_memory_utilization=r.gpu_memory_utilization, sleep_level=r.sleep_level)
    run.announce(vllm_engine=settings.summary)
    return VLLMRollout.create(
        inputs.model_path, cfg.model.dtype, longest, cfg.seed, settings=settings,
        tensor_parallel_size=r.tensor_parallel_size, world=d.world, rank=d.rank,
        eos_token_ids=eos,
        weights=lambda: iter_full_params(policy.module, t.zero_stage, names),
        weights_version=lambda: weights_version(policy),
        image_token_id=inputs.image_token_id, mm_processor_kwargs=sizes or None,
    )


@dataclass
class Models:
    """The engines a run trains and samples with."""

    policy: Any  # DeepSpeed engine
    reference: Any | None  # frozen DeepSpeed engine for the KL term (algorithm.kl_coef > 0)
    rollout: RolloutBackend


def build_models(cfg: RunConfig, inputs: Inputs, d: eng.Dist, run: RunHandle) -> Models:
    """Policy (and reference) engines from the model path, then the sampler on the policy."""
    ds_cfg = eng.ds_config(cfg, d.world)
    hf_ds_ref = None
    if cfg.trainer.zero_stage == 3:  # partition weights while loading (outlives from_pretrained)
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_ref = HfDeepSpeedConfig(ds_cfg)
    if ds_cfg["zero_optimization"]["stage"] != cfg.trainer.zero_stage:
        run.announce(zero_stage="model.dtype=bfloat16: gradients accumulate in fp32, which "
                     "DeepSpeed does from ZeRO stage 1 on, so trainer.zero_stage=0 runs as "
                     "stage 1 (the same memory on one rank)")
    policy = eng.make_policy_engine(load_causal_lm(inputs.model_path, cfg.model), cfg, ds_cfg)
    # Train mode, where transformers checkpoints activations (model.gradient_checkpointing);
    # dropout is off (models/load.py), so the log-probs are those of the sampler's eval mode.
    policy.module.train()
    if cfg.trainer.zero_stage == 3:  # how many tensors DeepSpeed really shards (the others
        run.note(zero3_sharded_tensors=eng.sharded_tensors(policy.module))  # stay whole)
    reference = None
    if cfg.algorithm.kl_coef > 0:
        reference = eng.make_reference_engine(load_causal_lm(inputs.model_path, cfg.model),
                                              ds_cfg)
    del hf_ds_ref
    return Models(policy, reference, make_rollout(cfg, policy, inputs, d, run))
