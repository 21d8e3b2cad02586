"""The GRPO training loop, top to bottom.

One step: pick prompts -> sample ``rollout.n`` completions each -> score -> group-relative
advantages -> clipped policy-gradient update(s) in a DeepSpeed engine -> gather the whole
global batch -> length telemetry to the run store and W&B.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from grpo_cli.algo.advantages import group_advantages, zero_std_group_fraction
from grpo_cli.algo.kl import kl_k3
from grpo_cli.algo.losses import (
    gather_token_logprobs,
    policy_gradient_loss,
    token_entropy,
    token_loss_weights,
)
from grpo_cli.config.schema import RunConfig
from grpo_cli.config.validate import response_caps, val_cap
from grpo_cli.data.datasets import PromptSampler, PromptSet, build_prompts, load_rows
from grpo_cli.data.vision import concat_vision, image_inputs
from grpo_cli.models.load import (
    eos_token_ids,
    load_causal_lm,
    load_processor,
    load_tokenizer,
    resolve_model_path,
    vision_token_id,
)
from grpo_cli.rewards.combine import combine_rewards
from grpo_cli.rewards.loader import RewardFn, load_reward_fn, score_batch
from grpo_cli.rewards.shaping import cap_at_step
from grpo_cli.rollout.base import Completion, RolloutBackend, RolloutRequest
from grpo_cli.rollout.hf import HFRollout
from grpo_cli.telemetry.length_metrics import length_histogram, step_length_metrics
from grpo_cli.telemetry.run import RunHandle, open_run
from grpo_cli.train import checkpoint as ckpt
from grpo_cli.train import engine as eng


@dataclass
class Batch:
    """Training tensors for this rank's completions (prompt left-padded, completion right)."""

    input_ids: torch.Tensor  # [N, P + T]
    attention_mask: torch.Tensor  # [N, P + T]
    position_ids: torch.Tensor  # [N, P + T]
    completion_ids: torch.Tensor  # [N, T]
    loss_mask: torch.Tensor  # [N, T] float, 1 on generated tokens that carry loss
    advantages: torch.Tensor  # [N]
    # Log-prob the sampler reported for each generated token [N, T] (0 after a completion's
    # end): compared with the training forward pass to expose engine mismatch.
    sampling_logprobs: torch.Tensor
    prompt_width: int  # P
    # Vision-language models: each row's pixel_values / image_grid_thw, and the image
    # placeholder id (positions are then the model's own 3-D rope, from the attention mask).
    vision: list[dict[str, torch.Tensor]] | None = None
    image_token_id: int | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_batch(
    prompts: list[list[int]], completions: list[Completion], advantages: torch.Tensor,
    pad_id: int, mask_truncated: bool, vision: list[dict[str, torch.Tensor]] | None = None,
    image_token_id: int | None = None,
) -> Batch:
    """Pack prompt + completion pairs; ``prompts[i]`` is the prompt of ``completions[i]``."""
    n = len(completions)
    p_width = max(len(p) for p in prompts)
    t_width = max(len(c.token_ids) for c in completions)
    input_ids = torch.full((n, p_width + t_width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, p_width + t_width), dtype=torch.long)
    loss_mask = torch.zeros((n, t_width), dtype=torch.float32)
    sampling = torch.zeros((n, t_width), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        input_ids[i, p_width - len(p) : p_width] = torch.tensor(p)
        input_ids[i, p_width : p_width + len(c.token_ids)] = torch.tensor(c.token_ids)
        attention[i, p_width - len(p) : p_width + len(c.token_ids)] = 1
        sampling[i, : len(c.logprobs)] = torch.tensor(c.logprobs)
        if not (mask_truncated and c.truncated):
            loss_mask[i, : len(c.token_ids)] = 1.0
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(input_ids, attention, position_ids, input_ids[:, p_width:], loss_mask,
                 advantages, sampling, p_width, vision, image_token_id)


def forward_logprobs(
    model: Any, b: Batch, rows: slice, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n, T] of the completion tokens (and their entropies) for rows of the batch."""
    input_ids = b.input_ids[rows]
    extra: dict[str, Any] = {"position_ids": b.position_ids[rows]}
    if b.vision is not None:
        extra = vision_kwargs(b.vision[rows], input_ids, b.image_token_id)
    logits = model(
        input_ids=input_ids, attention_mask=b.attention_mask[rows], use_cache=False, **extra,
    ).logits[:, b.prompt_width - 1 : -1]  # [n, T, V]: position t predicts completion token t
    logp = gather_token_logprobs(logits, b.completion_ids[rows], temperature)
    entropy = token_entropy(logits.detach(), temperature) if with_entropy else None
    return logp, entropy


def vision_kwargs(parts: list[dict[str, torch.Tensor]], input_ids: torch.Tensor,
                  image_token_id: int | None) -> dict[str, Any]:
    """Model inputs for the images of these rows; ``mm_token_type_ids`` (1 on image pads)
    lets the model build Qwen2.5-VL's 3-D positions from the token ids."""
    out: dict[str, Any] = dict(concat_vision(parts))
    if image_token_id is not None:
        out["mm_token_type_ids"] = (input_ids == image_token_id).int()
    return out


@torch.no_grad()
def logprobs_no_grad(model: Any, b: Batch, micro: int, temperature: float) -> torch.Tensor:
    parts = [forward_logprobs(model, b, slice(i, i + micro), temperature, False)[0]
             for i in range(0, len(b.advantages), micro)]
    return torch.cat(parts)


def train_on_batch(
    policy: Any, b: Batch, cfg: RunConfig, cap: int, d: eng.Dist, ref_logp: torch.Tensor | None,
) -> dict[str, float]:
    """``updates_per_batch`` optimiser steps over the batch; loss weights use global counts."""
    a, t = cfg.algorithm, cfg.trainer
    temp = cfg.rollout.temperature
    n = len(b.advantages)
    old_logp = logprobs_no_grad(policy, b, t.micro_batch_size, temp) if t.updates_per_batch > 1 \
        else None
    per_update = n // t.updates_per_batch
    sums = dict(loss=0.0, entropy=0.0, kl=0.0, clipped=0.0, tokens=0.0, lp_diff=0.0,
                lp_tokens=0.0)
    grad_norms: list[float] = []
    skipped = 0  # updates dropped for non-finite gradients
    for u in range(t.updates_per_batch):
        upd = slice(u * per_update, (u + 1) * per_update)
        mask_u = b.loss_mask[upd]
        local = [float((mask_u.sum(1) > 0).sum()), float(mask_u.sum())]
        num_seqs, num_tokens = eng.all_reduce_sum(local, d.device, d.world)
        for start in range(upd.start, upd.stop, t.micro_batch_size):
            rows = slice(start, start + t.micro_batch_size)
            mask = b.loss_mask[rows].to(d.device)
            logp, entropy = forward_logprobs(policy, b, rows, temp, with_entropy=True)
            old = logp.detach() if old_logp is None else old_logp[rows].to(d.device)
            if u == 0:  # sampler vs trainer on the same weights: ~0 for hf in fp32
                # generated tokens are where the completion part of the attention mask is 1
                tokens_here = b.attention_mask[rows, b.prompt_width:].float().to(d.device)
                sampled = b.sampling_logprobs[rows].to(d.device)
                sums["lp_diff"] += float(((logp.detach() - sampled).abs() * tokens_here).sum())
                sums["lp_tokens"] += float(tokens_here.sum())
            token_loss, clipped = policy_gradient_loss(
                logp, old, b.advantages[rows].to(d.device), a.clip_ratio_low, a.clip_ratio_high
            )
            if ref_logp is not None:
                kl = kl_k3(logp, ref_logp[rows].to(d.device))
                token_loss = token_loss + a.kl_coef * kl
                sums["kl"] += float((kl.detach() * mask).sum())
            weights = token_loss_weights(
                mask, a.loss_agg_mode, num_seqs=num_seqs, num_tokens=num_tokens,
                norm_constant=a.loss_norm_constant or cap,
            )
            loss = (weights * token_loss).sum()
            # DeepSpeed averages gradients over ranks; weights are already global, so undo it.
            policy.backward(loss * d.world, scale_wrt_gas=False)
            skipped += eng.optimizer_step(policy)
            sums["loss"] += float(loss.detach())
            assert entropy is not None
            sums["entropy"] += float((entropy * mask).sum())
            sums["clipped"] += float((clipped.float() * mask).sum())
            sums["tokens"] += float(mask.sum())
        grad_norm = policy.get_global_grad_norm()
        if grad_norm is not None and np.isfinite(float(grad_norm)):
            grad_norms.append(float(grad_norm))
    keys = list(sums)
    totals = dict(zip(keys, eng.all_reduce_sum([sums[k] for k in keys], d.device, d.world),
                      strict=True))
    tokens = max(totals["tokens"], 1.0)
    out = {
        "loss/pg": totals["loss"] / t.updates_per_batch,
        "policy/entropy": totals["entropy"] / tokens,
        "policy/clip_frac": totals["clipped"] / tokens,
        # mean |log p_sampler - log p_trainer| per generated token, before the first update
        "rollout/logprob_diff": totals["lp_diff"] / max(totals["lp_tokens"], 1.0),
        "train/skipped_updates": float(skipped),
    }
    if ref_logp is not None:
        out["policy/kl"] = totals["kl"] / tokens
    if grad_norms:
        out["train/grad_norm"] = float(np.mean(grad_norms))
    return out


def gather_columns(local: dict[str, np.ndarray], d: eng.Dist) -> dict[str, np.ndarray]:
    """Per-completion columns of every rank, concatenated in rank order (groups stay whole)."""
    parts = eng.all_gather_objects(local, d.world)
    return {k: np.concatenate([p[k] for p in parts]) for k in local}


def train(cfg: RunConfig, resolved: DictConfig, experiment_text: str | None = None) -> str:
    """Run GRPO as configured; returns the run id. The run store is written by rank 0."""
    d = eng.init_distributed()
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed)
    inputs = load_inputs(cfg, d)
    run: RunHandle = open_run(cfg, resolved, d, experiment_text)
    stop = StopRequest()
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM (SLURM preemption, kill) and Ctrl-C end the run after the current step; a second
    # signal ends it at once. Handlers need the main thread (sweep arms in threads keep defaults).
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGTERM, signal.SIGINT)
                } if main_thread else {}
    try:
        _train(cfg, d, run, stop, inputs)
    except (KeyboardInterrupt, Terminated):
        run.close("interrupted")
        raise
    except BaseException:
        run.close("failed")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    run.close("completed")
    return run.run_id


class Terminated(Exception):
    """SIGTERM arrived: the run stops like on Ctrl-C and is marked interrupted."""


class TrainingDiverged(RuntimeError):
    """More than trainer.max_bad_steps updates had non-finite gradients."""


@dataclass
class StopRequest:
    """A signal asked the run to stop: the loop finishes its step, saves if asked, then stops."""

    signum: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # the second signal: stop now
            self.signum = signum
            self.stop_now()
        self.signum = signum

    def agreed(self, d: eng.Dist) -> bool:
        """Whether any rank was signalled (ranks must stop at the same step)."""
        (flag,) = eng.all_reduce_sum([float(self.signum is not None)], d.device, d.world)
        if flag and self.signum is None:
            self.signum = signal.SIGTERM
        return flag > 0

    def stop_now(self) -> None:
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(f"signal {self.signum}")


@dataclass
class Sampled:
    """One rank's sampled, decoded and scored completions (grouped by prompt)."""

    prompt_ids: list[int]  # dataset index of each completion's prompt
    completions: list[Completion]
    texts: list[str]
    lengths: np.ndarray  # [N] int
    truncated: np.ndarray  # [N] bool
    rewards: np.ndarray  # [N] final reward (task reward + length terms)
    correct: np.ndarray  # [N] float, NaN = unknown
    components: dict[str, np.ndarray]
    vision: list[dict[str, torch.Tensor]] | None = None  # per completion (VL models)


def sample_and_score(
    rollout: RolloutBackend, prompts: PromptSet, ids: list[int], cap: int, n: int,
    cfg: RunConfig, reward_fn: RewardFn, tokenizer: Any, step: int, seed: int,
) -> Sampled:
    """Sample ``n`` completions per prompt at ``cap``, decode them, and compute the reward.
    ``seed`` also seeded torch's generator (the hf backend draws from it; vLLM takes seeds)."""
    torch.manual_seed(seed)
    images = vision = None
    if prompts.processor is not None:  # decode and resize once: tensors for hf and training,
        images = [prompts.images(i, cfg.data) for i in ids]  # the PIL images for vLLM
        vision = [image_inputs(prompts.processor, im) for im in images]
    result = rollout.generate(RolloutRequest(
        [prompts.prompt_ids[i] for i in ids], n=n, max_new_tokens=cap,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=seed,
        multi_modal=vision, images=images if cfg.rollout.backend == "vllm" else None,
    ))
    comps = result.completions
    owner = [ids[c.prompt_index] for c in comps]
    # Only EOS is stripped: tags such as <answer> may be special tokens the reward needs.
    eos = set(rollout.eos_token_ids)
    texts = tokenizer.batch_decode(
        [[t for t in c.token_ids if t not in eos] for c in comps], skip_special_tokens=False
    )
    lengths = np.array([len(c.token_ids) for c in comps])
    truncated = np.array([c.truncated for c in comps])
    scores = score_batch(reward_fn, [
        {**prompts.rows[i], "prompt": prompts.texts[i], "response": text,
         "response_length": int(length), "ground_truth": prompts.rows[i][cfg.data.answer_key],
         "truncated": bool(c.truncated)}
        for i, c, text, length in zip(owner, comps, texts, lengths, strict=True)
    ])
    rewards, added = combine_rewards(scores, lengths, truncated, cap, n, step, cfg.reward,
                                     cfg.length)
    return Sampled(owner, comps, texts, lengths, truncated, rewards, scores.correct,
                   {**scores.components, **added},
                   [vision[c.prompt_index] for c in comps] if vision is not None else None)


def validation_metrics(
    rollout: RolloutBackend, val: PromptSet, cap: int, cfg: RunConfig, reward_fn: RewardFn,
    tokenizer: Any, step: int, d: eng.Dist,
) -> dict[str, float]:
    """The natural-length probe: the same held-out prompts every time, at a generous cap."""
    per_rank = len(val.prompt_ids) // d.world
    ids = list(range(d.rank * per_rank, (d.rank + 1) * per_rank))
    s = sample_and_score(rollout, val, ids, cap, cfg.val.n, cfg, reward_fn, tokenizer, step,
                         seed=cfg.seed * 7_919 + d.rank)  # the same draws at every probe
    cols = gather_columns({"length": s.lengths, "truncated": s.truncated,
                           "reward": s.rewards, "correct": s.correct}, d)
    groups = np.arange(len(cols["length"])) // cfg.val.n
    m = step_length_metrics(cols["length"], cols["truncated"], cols["reward"], groups,
                            cols["correct"], cap)
    if not np.isnan(cols["correct"]).all():
        m["accuracy"] = float(np.nanmean(cols["correct"]))
    return {f"val/{k}": v for k, v in m.items()}


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
                        key="data.val_files" if cfg.data.val_files else "data.train_files")
    val.prompt_ids, val.rows, val.texts = val.prompt_ids[:k], val.rows[:k], val.texts[:k]
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
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    image_token = vision_token_id(model_path, cfg.model.trust_remote_code)
    processor = load_processor(model_path, cfg.model.trust_remote_code) \
        if image_token is not None else None
    reward_fn = load_reward_fn(cfg.reward.function, dict(cfg.reward.kwargs))
    prompts = build_prompts(load_rows(cfg.data.train_files, cfg.data, seed=cfg.seed), cfg.data,
                            tokenizer, processor, cfg.data.train_files)
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
                         image_token_id=inputs.image_token_id)
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


def _train(cfg: RunConfig, d: eng.Dist, run: RunHandle, stop: StopRequest,
           inputs: Inputs) -> None:
    t, r, a = cfg.trainer, cfg.rollout, cfg.algorithm

    # --- data and model -------------------------------------------------------------------
    model_path, tokenizer, reward_fn = inputs.model_path, inputs.tokenizer, inputs.reward_fn
    prompts, val_prompts = inputs.prompts, inputs.val_prompts
    run.note(dropped_prompts=prompts.dropped, train_prompts=len(prompts.prompt_ids),
             bad_rows=prompts.bad_rows)
    sampler = PromptSampler(len(prompts.prompt_ids), cfg.seed, cfg.data.shuffle)
    ds_cfg = eng.ds_config(cfg, d.world)
    hf_ds_ref = None
    if t.zero_stage == 3:  # partition weights while loading (must outlive from_pretrained)
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_ref = HfDeepSpeedConfig(ds_cfg)
    policy = eng.make_policy_engine(load_causal_lm(model_path, cfg.model), cfg, ds_cfg)
    policy.module.eval()  # no dropout: log-probs must match between sampling and training
    reference = None
    if a.kl_coef > 0:
        reference = eng.make_reference_engine(load_causal_lm(model_path, cfg.model), ds_cfg)
    del hf_ds_ref
    rollout = make_rollout(cfg, policy, inputs, d, run)
    run.note(torch_threads=torch.get_num_threads())  # what training runs with, engine started
    schedule = [tuple(s) for s in cfg.length.schedule] if cfg.length.schedule else None
    hist_cap = max(response_caps(cfg))
    probe_cap = val_cap(cfg)

    start = 0
    if cfg.resume:  # continue after the last complete checkpoint; later records are dropped
        ckpt_dir = run.run_dir / "checkpoints"
        done = eng.all_gather_objects(ckpt.last_complete_step(ckpt_dir) if d.is_main else None,
                                      d.world)[0]
        client = ckpt.load(policy, ckpt_dir, done)
        sampler.load_state_dict(client["sampler"])
        run.rewind_to(done)
        start = done + 1

    # --- steps ------------------------------------------------------------------------------
    per_rank = t.prompts_per_step // d.world
    last_log_s = 0.0
    bad_updates = 0  # skipped for non-finite gradients, this process's share of the run
    for step in run.progress(range(start, t.steps)):
        val_metrics: dict[str, float] = {}
        if val_prompts is not None and (step % t.val_every == 0 or step == t.steps - 1):
            # the policy before this step's update; the last step too, to see where it ended
            val_metrics = validation_metrics(rollout, val_prompts, probe_cap, cfg, reward_fn,
                                             tokenizer, step, d)
        step_start = time.perf_counter()
        cap = cap_at_step(schedule, step, cfg.data.max_response_length, cfg.length.schedule_mode)
        global_ids = sampler.next(t.prompts_per_step)
        local_ids = global_ids[d.rank * per_rank : (d.rank + 1) * per_rank]
        s = sample_and_score(rollout, prompts, local_ids, cap, r.n, cfg, reward_fn, tokenizer,
                             step, seed=cfg.seed * 1_000_003 + step * 1_009 + d.rank)

        # --- advantages (a prompt's group lives on one rank) and the update --------------
        valid = torch.as_tensor(~s.truncated) if a.mask_truncated_in_adv else None
        advantages = group_advantages(torch.tensor(s.rewards, dtype=torch.float32), r.n,
                                      a.norm_adv_by_std, a.adv_eps, valid=valid)
        batch = make_batch([prompts.prompt_ids[i] for i in s.prompt_ids], s.completions,
                           advantages, tokenizer.pad_token_id, a.mask_truncated, s.vision,
                           inputs.image_token_id)
        rollout_s = time.perf_counter() - step_start
        train_start = time.perf_counter()
        ref_logp = None
        if reference is not None:
            ref_logp = logprobs_no_grad(reference, batch, t.micro_batch_size, r.temperature)
        train_stats = train_on_batch(policy, batch, cfg, cap, d, ref_logp)
        train_s = time.perf_counter() - train_start
        bad_updates += int(train_stats["train/skipped_updates"])
        train_stats["train/skipped_updates_total"] = float(bad_updates)
        if bad_updates > t.max_bad_steps:
            raise TrainingDiverged(
                f"{bad_updates} optimiser updates had non-finite gradients and were skipped "
                f"(trainer.max_bad_steps={t.max_bad_steps}); lower trainer.lr (now {t.lr}) "
                f"or trainer.grad_clip (now {t.grad_clip}), and check the rewards")

        # --- telemetry over the whole global batch ---------------------------------------
        telemetry_start = time.perf_counter()
        cols = gather_columns({
            "step": np.full(len(s.lengths), step, dtype=np.int32),
            "prompt_id": np.array(s.prompt_ids, dtype=np.int64),
            "sample": np.array([c.sample for c in s.completions], dtype=np.int16),
            "response_length": s.lengths.astype(np.int32),
            "truncated": s.truncated,
            "reward": s.rewards.astype(np.float32),
            "correct": s.correct.astype(np.float32),
            "advantage": advantages.numpy().astype(np.float32),
            **{k: v.astype(np.float32) for k, v in s.components.items()},
        }, d)
        group_ids = np.arange(len(cols["step"])) // r.n  # every rank's groups are contiguous
        metrics = step_length_metrics(
            cols["response_length"], cols["truncated"], cols["reward"], group_ids,
            cols["correct"], cap,
        )
        metrics.update({f"reward/{k}_mean": float(np.nanmean(cols[k])) for k in s.components})
        metrics.update(train_stats)
        step_s = time.perf_counter() - step_start
        metrics.update({
            "reward/zero_std_frac": zero_std_group_fraction(torch.tensor(cols["reward"]), r.n),
            "perf/rollout_s": rollout_s, "perf/train_s": train_s, "perf/step_s": step_s,
            "perf/tokens_per_s": float(cols["response_length"].sum()) / step_s,
            # gather + metrics of this step, plus the sinks' write time of the previous one
            "perf/telemetry_s": time.perf_counter() - telemetry_start + last_log_s,
        })
        metrics.update(val_metrics)
        samples = None
        if cfg.logger.sample_every > 0 and step % cfg.logger.sample_every == 0:
            samples = [
                {"step": step, "prompt": prompts.texts[i], "completion": text,
                 "length": int(n_tok), "truncated": bool(tr), "reward": float(rw)}
                for i, text, n_tok, tr, rw in list(zip(s.prompt_ids, s.texts, s.lengths,
                                                       s.truncated, s.rewards, strict=True))
                [: cfg.logger.samples_per_step]
            ]
        log_start = time.perf_counter()
        hist = length_histogram(cols["response_length"], hist_cap)
        run.log(step, metrics, {"length/hist": hist}, cols, samples)
        last_log_s = time.perf_counter() - log_start
        saved = t.save_every > 0 and (step + 1) % t.save_every == 0
        if saved:
            run.save_checkpoint(policy, step, {"sampler": sampler.state_dict()})
        if stop.agreed(d):  # a signal arrived during this step, which is now complete
            if t.save_on_interrupt and not saved:
                run.save_checkpoint(policy, step, {"sampler": sampler.state_dict()})
            stop.stop_now()
    if t.save_final:
        run.save_checkpoint(policy, t.steps - 1, {"sampler": sampler.state_dict()})
