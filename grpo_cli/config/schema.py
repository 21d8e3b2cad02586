"""Typed run configuration.

Hydra composes YAML from ``conf/``; the result is merged into these dataclasses once at
start-up, so unknown keys and wrong types fail before anything heavy is imported or loaded.
Cross-field checks live in :mod:`grpo_cli.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TOY = "toy"  # sentinel for the embedded toy model / task
TOY_VL = "toy-vl"  # the embedded vision-language toy (a tiny Qwen2.5-VL grown from it)
TOY_CONTEXT = 512  # the toys' context length (max_position_embeddings)

# Allowed values of choice keys, here so checking a config needs no torch.
LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
LENGTH_PENALTIES = ("none", "cosine", "kimi", "linear", "shorter_better", "arora_zanette",
                    "l1_exact", "l1_max")
SCHEDULE_MODES = ("step", "linear", "adaptive")
GFPO_METRICS = ("length", "reward_per_token")
ADV_ESTIMATORS = ("grpo", "rloo")
ROLLOUT_CORRECTIONS = ("none", "tis", "icepop", "seq_mask")
# Published bands of the masking corrections (ratio trainer / sampler): IcePop's token band
# (Ling team 2025) and veRL's geometric-mean sequence band.
CORRECTION_BANDS = {"icepop": (0.5, 5.0), "seq_mask": (0.999, 1.001)}
# An unset trainer.micro_batch_size: the largest divisor of the per-update batch up to this.
DEFAULT_MICRO_BATCH = 32


@dataclass
class WarmStartConfig:
    """A supervised warm start ("cold start", DeepSeek-R1) before GRPO: the base model is
    fine-tuned on worked solutions once, cached by everything that shapes it, and the run
    (policy, reference and sampler) starts from that checkpoint."""

    # dataset with a solution column (toy:<task> or a file, as data.train_files); null: off
    data: str | None = None
    solution_key: str = "solution"  # column holding the worked solution the model imitates
    steps: int = 100  # optimiser steps of supervised fine-tuning
    batch_size: int = 16  # examples per step (distinct rows: steps x batch_size are drawn)
    lr: float = 1.0e-4  # AdamW peak learning rate (5% linear warm-up, cosine to 10%)
    seed: int = 0  # rows, batch order and init of the warm start (not the run's seed)


@dataclass
class ModelConfig:
    # hub id, local HF checkpoint dir, "toy" or "toy-vl" (embedded models), a .gguf file or
    # pkg:<distribution>/<file> (a GGUF file an installed package ships)
    path: str = TOY
    gguf_file: str | None = None  # with a directory model.path: the GGUF file in it
    dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False  # run the checkpoint's own modelling code (hub models)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)


@dataclass
class DataConfig:
    train_files: str = "toy:add"  # JSONL / Parquet path, HF dataset id with @split, or toy:<task>
    val_files: str | None = None  # same forms; default: a held-out slice of the toy task
    prompt_key: str = "problem"  # column holding the prompt; {problem} in prompt_template is it
    answer_key: str = "answer"  # column with the reference answer the reward gets
    image_key: str = "images"  # column of image paths / bytes / HF Image dicts / base64
    # Vision-language models: image resize bounds (qwen-vl-utils); null keeps its defaults.
    min_pixels: int | None = None
    max_pixels: int | None = None  # see min_pixels
    on_bad_row: str = "fail"  # missing or corrupt images: fail (naming the row) | skip (counted)
    # Python format string applied to the prompt column before the chat template.
    prompt_template: str = "{problem}"
    max_prompt_length: int = 64  # tokens; longer prompts are dropped (and counted)
    max_response_length: int = 32  # alias: max_len
    shuffle: bool = True  # shuffle prompts each epoch (seeded)
    toy_size: int = 4096  # rows generated for toy:<task> datasets
    # L1 / LCPO budgets: [min, max] tokens; each prompt gets a budget N drawn from it
    # (deterministic in seed and row index) and becomes length_budget_template with {prompt}
    # and {budget} filled in. null: no budgets.
    length_budget: list[int] | None = None
    length_budget_template: str = "{prompt} Think for {budget} tokens."  # see length_budget


@dataclass
class RolloutConfig:
    backend: str = "hf"  # hf | vllm
    n: int = 8  # samples per prompt (the GRPO group size)
    temperature: float = 1.0  # sampling temperature (training rollouts and probe)
    top_p: float = 1.0  # nucleus sampling; 1.0 samples the full distribution
    micro_batch_size: int = 64  # sequences per generate call (hf backend)
    # hf backend, text only: a sequence leaves the batch at its EOS instead of being computed
    # as padding until the longest ends (rollout/decode.py; the same draws as generate);
    # false: transformers generate
    drop_finished: bool = True
    # vllm only. Its share of each GPU; on CPU a share of host RAM. null: 0.5 on GPUs; on CPU
    # a KV cache sized for the run's own sequences (see rollout/vllm.py: engine_settings).
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1  # vllm only: ranks sharing one engine
    # vllm only: 0 stays awake, 1 offloads weights to CPU, 2 drops them. null: 1 on GPUs, 0 on
    # CPU (vLLM has no sleep mode there).
    sleep_level: int | None = None


@dataclass
class AlgorithmConfig:
    loss_agg_mode: str = "seq-mean-token-mean"  # | token-mean | seq-mean-token-sum-norm
    # grpo: R - group mean (over std with norm_adv_by_std) | rloo: R - mean of the others
    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True  # divide by the group std (false: Dr. GRPO)
    adv_eps: float = 1e-6  # added to the group std before dividing
    kl_coef: float = 0.0  # k3 KL to the frozen initial policy; 0 disables the reference model
    clip_ratio_low: float = 0.2  # PPO clip: ratio >= 1 - low
    clip_ratio_high: float = 0.28  # PPO clip: ratio <= 1 + high (DAPO clip-higher)
    mask_truncated: bool = False  # DAPO overlong filtering: truncated completions carry no loss
    # Leave truncated completions out of the group mean/std too (default: they still count).
    mask_truncated_in_adv: bool = False
    # Constant C of seq-mean-token-sum-norm; null means the response cap in force.
    loss_norm_constant: float | None = None
    # GFPO: of each group's rollout.n samples train on the gfpo_keep best by gfpo_metric
    # (length: shortest | reward_per_token), advantages over those; 0 disables.
    gfpo_keep: int = 0
    gfpo_metric: str = "length"  # see gfpo_keep
    # DAPO dynamic sampling: a group whose dynamic_sampling_key is constant (or, with a
    # low/high band, whose mean is not strictly inside it) trains nothing and is dropped;
    # rounds of trainer.prompts_per_step more prompts are drawn until the step holds
    # prompts_per_step informative groups or max_rounds rounds are done.
    dynamic_sampling: bool = False
    dynamic_sampling_key: str = "reward"  # reward (the final one) | a reward component
    dynamic_sampling_low: float | None = None  # EasyR1's filter_low (null: no lower bound)
    dynamic_sampling_high: float | None = None  # EasyR1's filter_high (null: no upper bound)
    dynamic_sampling_max_rounds: int = 10  # then dropped groups fill it (no loss)
    # Sampler-trainer mismatch correction, per-token weights from trainer vs sampler
    # log-probs: none | tis (min(ratio, cap)) | icepop (ratio inside [low, high], else 0) |
    # seq_mask (a sequence whose geometric-mean ratio leaves [low, high] gets 0).
    rollout_correction: str = "none"
    rollout_correction_cap: float = 2.0  # tis
    # icepop / seq_mask band; null: the published one (icepop 0.5-5, seq_mask 0.999-1.001)
    rollout_correction_low: float | None = None
    rollout_correction_high: float | None = None  # see rollout_correction_low


@dataclass
class RewardConfig:
    # "module:fn" or "path/to/file.py:fn"; called once per batch with a list of dicts.
    function: str = "grpo_cli.rewards.math:compute_score"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the reward function
    # Multi-objective: overall = sum of weight * component (e.g. {accuracy: 1.0, format: 0.1});
    # null keeps the reward function's own `overall`.
    weights: dict[str, float] | None = None


@dataclass
class CosineLengthConfig:
    """Yeo et al. 2025 cosine length-scaled reward (their published values)."""

    r0_correct: float = 2.0  # correct, length 0
    rL_correct: float = 1.0  # correct, at the cap
    r0_wrong: float = -10.0  # wrong, length 0
    rL_wrong: float = 0.0  # wrong, at the cap
    r_exceed: float = -10.0  # truncated by the cap


@dataclass
class ShorterBetterConfig:
    """ShorterBetter (Yi et al. 2025): alpha * 1[correct] - beta * |len - SOL|."""

    alpha: float = 1.0  # reward of a correct answer
    beta: float = 0.001  # per token


@dataclass
class AroraZanetteConfig:
    """Arora & Zanette 2025: 1[correct] * (1 - alpha * sigmoid(normalised length))."""

    alpha: float = 0.1  # strength of the length discount


@dataclass
class L1Config:
    """L1 / LCPO (Aggarwal & Welleck 2025): Exact 1[correct] - alpha |N - len|; Max
    1[correct] * clip(alpha (N - len) + delta, 0, 1). N: the prompt's data.length_budget."""

    alpha: float = 0.0003  # per token
    delta: float = 0.5  # L1-Max only


@dataclass
class LengthConfig:
    """Length controls (caps schedule, overlong penalty, length-aware rewards)."""

    schedule: list[Any] | None = None  # [[step, max_len], ...]; null: the fixed cap
    # step: piecewise constant | linear: interpolate between stages | adaptive: ThinkPrune
    # rounds (length.rounds), each started by a low clip ratio
    schedule_mode: str = "step"
    overlong_buffer: int = 0  # DAPO soft overlong punishment; 0 disables
    overlong_penalty_factor: float = 1.0  # the soft penalty reached at the cap
    # none | cosine | kimi | linear | shorter_better | arora_zanette | l1_exact | l1_max
    penalty: str = "none"
    penalty_weight: float = 1.0  # multiplies the penalty term before it is added
    penalty_warmup_steps: int = 0  # the penalty applies from this step on (Kimi: after warm-up)
    cosine: CosineLengthConfig = field(default_factory=CosineLengthConfig)
    shorter_better: ShorterBetterConfig = field(default_factory=ShorterBetterConfig)
    arora_zanette: AroraZanetteConfig = field(default_factory=AroraZanetteConfig)
    l1: L1Config = field(default_factory=L1Config)
    # ProRL stop-properly penalty on completions the cap stopped: reward * coef, or a fixed
    # value (set one; null disables).
    stop_penalty_coef: float | None = None
    stop_penalty_value: float | None = None  # see stop_penalty_coef
    # schedule_mode=adaptive (ThinkPrune): caps after the starting max_len, each lower than the
    # last; the next round starts after a step with clip ratio < round_clip_threshold once
    # the current round has run round_min_steps steps.
    rounds: list[int] | None = None
    round_clip_threshold: float = 0.1  # see rounds
    round_min_steps: int = 5  # see rounds


@dataclass
class TrainerConfig:
    steps: int = 60  # rollout + update steps
    prompts_per_step: int = 16  # global, across all ranks
    # Completions per forward/backward; null: the largest that divides the per-rank update
    # batch, up to 32 (a set value must divide it).
    micro_batch_size: int | None = None
    updates_per_batch: int = 1  # optimiser steps per rollout batch (>1 uses old log-probs)
    # Micro-batches of rows sorted by length, each cut to its own longest row: less padding
    # in the forward and backward passes, the same loss up to the order of float sums.
    group_by_length: bool = False
    lr: float = 7e-4  # AdamW learning rate (the toy's; real models use ~1e-6)
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # AdamW betas
    adam_eps: float = 1e-8  # AdamW's epsilon (torch's default)
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    max_bad_steps: int = 10  # updates skipped for NaN/inf gradients before the run stops
    warmup_steps: int = 0  # optimiser steps of linear LR warm-up
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    # DeepSpeed config entries merged over the generated one (e.g. {zero_optimization:
    # {offload_optimizer: {device: cpu}}}); the keys other trainer./model. keys set are refused.
    deepspeed: dict[str, Any] = field(default_factory=dict)
    save_every: int = 0  # 0: only at the end (if save_final)
    save_final: bool = False  # checkpoint after the last step
    save_on_interrupt: bool = True  # SIGTERM/Ctrl-C: checkpoint the finished step, then stop
    val_every: int = 10  # 0 disables the validation probe
    num_threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    # Ranks: `grpo run trainer.gpus=8` starts them itself through `launcher` (see launch.py).
    gpus: int = 1  # ranks per node (one per GPU; CPU ranks when no GPU)
    nodes: int = 1  # machines; see hostfile / master_addr
    launcher: str = "torchrun"  # torchrun | deepspeed
    hostfile: str | None = None  # DeepSpeed hostfile ("host slots=N" lines): one command, all nodes
    master_addr: str | None = None  # rendezvous host for nodes > 1 without a hostfile
    master_port: int = 29500  # rendezvous port
    # nodes > 1: seconds a node waits at the rendezvous for the others before failing
    rdzv_timeout: int = 600


@dataclass
class ValConfig:
    """Natural-length probe: fixed held-out prompts sampled at a generous cap."""

    max_len: int | None = None  # null: 4x the training cap
    num_prompts: int = 32  # fixed held-out prompts
    n: int = 2  # samples per prompt


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "grpo-cli"  # W&B project
    entity: str | None = None  # W&B team or user; null: the account's default


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sample_every: int = 10  # steps between decoded-sample dumps (samples.jsonl, W&B table)
    samples_per_step: int = 4  # decoded samples per dump
    progress: bool = True  # a line per 5% of the run (a bar on a terminal)
    # Also store each row's prompt and completion token ids in rollouts/ (re-scoring,
    # re-tokenising, checking an update by hand); about 4 bytes per token.
    store_tokens: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    length: LengthConfig = field(default_factory=LengthConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    val: ValConfig = field(default_factory=ValConfig)
    seed: int = 0  # seeds data order, sampling and init
    name: str | None = None  # optional human label, kept in meta.json
    runs_dir: str | None = None  # default: $GRPO_RUNS_DIR or ./runs
    sweep_id: str | None = None  # set by `grpo sweep`
    run_id: str | None = None  # set by `grpo sweep` so arms know their directory up front
    resume: str | None = None  # `grpo run resume=<run-id>`: continue from its last checkpoint
