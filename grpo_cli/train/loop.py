"""The GRPO training loop, top to bottom.

One step: pick prompts -> sample ``rollout.n`` completions each (with DAPO's dynamic
sampling, in rounds until enough groups carry signal) -> score -> group-relative
advantages -> clipped policy-gradient update(s) in a DeepSpeed engine -> gather the whole
global batch -> length telemetry to the run store and W&B -> checkpoint if due.

Every random draw is seeded from (seed, step, rank, round), so a resumed run continues exactly as
the uninterrupted one would (no RNG state is saved).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from grpo_cli.algo.advantages import gfpo_keep_mask, group_advantages, zero_std_group_fraction
from grpo_cli.config.schema import RunConfig
from grpo_cli.config.validate import response_caps, val_cap
from grpo_cli.data.datasets import PromptSampler
from grpo_cli.errors import Terminated, TrainingDiverged
from grpo_cli.rewards.shaping import adaptive_cap, cap_at_step
from grpo_cli.telemetry.histograms import length_histograms, pop_histograms
from grpo_cli.telemetry.length_metrics import length_control_metrics, step_length_metrics
from grpo_cli.telemetry.run import RunHandle, open_run
from grpo_cli.train import checkpoint as ckpt
from grpo_cli.train import engine as eng
from grpo_cli.train.batch import Batch, logprobs_no_grad, make_batch
from grpo_cli.train.build import Inputs, Models, build_models, load_inputs
from grpo_cli.train.dynamic import BatchRows, draw_informative
from grpo_cli.train.sample import (
    Rollouts,
    Scored,
    gather_columns,
    sample,
    score,
    tail_share,
    validation_metrics,
)
from grpo_cli.train.stop import StopRequest, stop_notice, stop_on_signals, stopped_message
from grpo_cli.train.update import train_on_batch


def train(cfg: RunConfig, resolved: DictConfig, experiment_text: str | None = None) -> str:
    """Run GRPO as configured; returns the run id. The run store is written by rank 0."""
    d = eng.init_distributed()
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed)
    inputs = load_inputs(cfg, d)
    run: RunHandle = open_run(cfg, resolved, d, experiment_text)
    notice = stop_notice(cfg.trainer.save_on_interrupt) if d.is_main else ""
    with stop_on_signals(notice) as stop:
        try:
            _train(cfg, d, run, stop, inputs)
        except (KeyboardInterrupt, Terminated):
            run.close("interrupted")
            if d.is_main:
                last = ckpt.last_complete_step(run.run_dir / "checkpoints")
                print(stopped_message(run.run_id, last), file=sys.stderr)
            raise
        except BaseException:
            run.close("failed")
            raise
    run.close("completed")
    eng.finish_distributed(d)
    return run.run_id


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Setup:
    """What the steps read and never change: built once before step 0."""

    cfg: RunConfig
    d: eng.Dist
    run: RunHandle
    inputs: Inputs
    models: Models


@dataclass
class Tally:
    """What the loop carries from one step to the next."""

    bad_updates: int = 0  # skipped for non-finite gradients, this process's share of the run
    last_log_s: float = 0.0  # the sinks' write time of the previous step
    # length/clip_ratio of every step so far (length.schedule_mode=adaptive decides from it)
    clip_ratios: list[float] = field(default_factory=list)


def _train(cfg: RunConfig, d: eng.Dist, run: RunHandle, stop: StopRequest,
           inputs: Inputs) -> None:
    t = cfg.trainer
    prompts = inputs.prompts
    run.note(dropped_prompts=prompts.dropped, train_prompts=len(prompts.prompt_ids),
             bad_rows=prompts.bad_rows, model_dir=inputs.model_path)
    sampler = PromptSampler(len(prompts.prompt_ids), cfg.seed, cfg.data.shuffle)
    x = Setup(cfg, d, run, inputs, build_models(cfg, inputs, d, run))
    # what training runs with, engines started
    run.note(torch_threads=torch.get_num_threads(), device=str(d.device))
    start = resume(x, sampler) if cfg.resume else 0
    tally = Tally(clip_ratios=clip_history(x, start))
    for step in run.progress(range(start, t.steps)):
        eng.reset_peak_memory(d)
        val_metrics = probe(x, step)
        step_start = time.perf_counter()
        cap = step_cap(cfg, step, tally)
        rollouts, scored, rows = sample_step(x, sampler, cap, step)
        kept = gfpo_filter(rollouts, scored, cfg)
        adv = advantages(scored.rewards, rollouts.truncated, cfg, kept)
        batch = build_batch(x, rollouts, adv, rows, kept)
        train_start = time.perf_counter()
        train_stats, row_stats = update(x, batch, cap, tally)
        scored.columns.update(scatter_rows(row_stats, rows, len(rollouts.lengths)))
        timings = {"perf/rollout_s": train_start - step_start,
                   "perf/train_s": time.perf_counter() - train_start, **eng.peak_memory(d),
                   **tail_share(rollouts)}
        log_step(x, step, cap, rollouts, scored, adv, train_stats, val_metrics, timings,
                 step_start, tally)
        checkpoint(x, step, sampler, stop)
    if t.save_final:
        run.save_checkpoint(x.models.policy, t.steps - 1, {"sampler": sampler.state_dict()})


def _schedule(cfg: RunConfig) -> list[tuple[Any, ...]] | None:
    return [tuple(s) for s in cfg.length.schedule] if cfg.length.schedule else None


def step_cap(cfg: RunConfig, step: int, tally: Tally) -> int:
    """The response cap of ``step``: the fixed cap, a step/linear schedule's, or (adaptive)
    the ThinkPrune round the clip ratios of the steps so far have reached."""
    ln = cfg.length
    if ln.schedule_mode == "adaptive":
        if len(tally.clip_ratios) != step:
            raise RuntimeError(f"adaptive caps: {len(tally.clip_ratios)} clip ratios recorded "
                               f"before step {step}")
        return adaptive_cap(tally.clip_ratios, cfg.data.max_response_length, ln.rounds or [],
                            ln.round_clip_threshold, ln.round_min_steps)
    return cap_at_step(_schedule(cfg), step, cfg.data.max_response_length, ln.schedule_mode)


def clip_history(x: Setup, start: int) -> list[float]:
    """The clip ratio of each step before ``start``: none for a new run; on resume, from the
    run's own metrics.jsonl (rewound to the checkpoint), so the adaptive caps replay exactly."""
    if start == 0 or x.cfg.length.schedule_mode != "adaptive":
        return []
    from grpo_cli.telemetry.store import read_metrics

    rows = read_metrics(x.run.run_dir) if x.d.is_main else None
    rows = eng.all_gather_objects(rows, x.d.world)[0]
    ratios = {m["step"]: float(m["length/clip_ratio"]) for m in rows
              if m["step"] < start and "length/clip_ratio" in m}
    if sorted(ratios) != list(range(start)):
        raise RuntimeError(f"resume: metrics.jsonl lacks length/clip_ratio for some of steps "
                           f"0-{start - 1}, which length.schedule_mode=adaptive replays")
    return [ratios[s] for s in range(start)]


def resume(x: Setup, sampler: PromptSampler) -> int:
    """Continue after the last complete checkpoint (later records are dropped); returns the
    first step to run."""
    ckpt_dir = x.run.run_dir / "checkpoints"
    done = eng.all_gather_objects(ckpt.last_complete_step(ckpt_dir) if x.d.is_main else None,
                                  x.d.world)[0]
    client = ckpt.load(x.models.policy, ckpt_dir, done)
    sampler.load_state_dict(client["sampler"])
    x.run.rewind_to(done)
    return done + 1


def probe(x: Setup, step: int) -> dict[str, Any]:
    """The natural-length probe on its schedule: the policy before this step's update, and
    at the last step too, to see where it ended."""
    t, val = x.cfg.trainer, x.inputs.val_prompts
    if val is None or not (step % t.val_every == 0 or step == t.steps - 1):
        return {}
    return validation_metrics(x.models.rollout, val, val_cap(x.cfg), x.cfg, x.inputs.reward_fn,
                              x.inputs.tokenizer, step, x.d)


def sample_step(x: Setup, sampler: PromptSampler, cap: int,
                step: int) -> tuple[Rollouts, Scored, BatchRows]:
    """This rank's rollouts of the step and the rows of them the update trains on: one
    round of ``prompts_per_step`` prompts, or (dynamic sampling) rounds until the batch
    holds that many informative groups."""
    cfg = x.cfg

    def draw(round_: int) -> tuple[Rollouts, Scored]:
        return sample_and_score(x, sampler.next(cfg.trainer.prompts_per_step), cap, step, round_)

    if not cfg.algorithm.dynamic_sampling:
        r, s = draw(0)
        return r, s, BatchRows.every(len(r.lengths))
    return draw_informative(draw, cfg.trainer.prompts_per_step // x.d.world, cfg.rollout.n,
                            cfg.algorithm, x.d)


def sample_and_score(x: Setup, global_ids: list[int], cap: int, step: int,
                     round_: int = 0) -> tuple[Rollouts, Scored]:
    """This rank's share of a round's prompts, sampled ``rollout.n`` times each and scored."""
    cfg, d = x.cfg, x.d
    per_rank = cfg.trainer.prompts_per_step // d.world
    ids = global_ids[d.rank * per_rank : (d.rank + 1) * per_rank]
    seed = cfg.seed * 1_000_003 + step * 1_009 + d.rank + round_ * 100_003
    rollouts = sample(x.models.rollout, x.inputs.prompts, ids, cap, cfg.rollout.n, cfg,
                      x.inputs.tokenizer, seed=seed)
    return rollouts, score(rollouts, x.inputs.prompts, cap, cfg.rollout.n, step, cfg,
                           x.inputs.reward_fn)


def build_batch(x: Setup, r: Rollouts, adv: torch.Tensor, rows: BatchRows,
                kept: np.ndarray | None) -> Batch:
    """Training tensors of the batch rows; rows that carry no loss (GFPO's unkept, dynamic
    sampling's filler) get an all-zero loss mask."""
    idx = rows.rows
    batch = make_batch([x.inputs.prompts.prompt_ids[r.prompt_ids[i]] for i in idx],
                       [r.completions[i] for i in idx], adv[torch.as_tensor(idx)],
                       x.inputs.tokenizer.pad_token_id, x.cfg.algorithm.mask_truncated,
                       [r.vision[i] for i in idx] if r.vision is not None else None,
                       x.inputs.image_token_id)
    loss = rows.loss if kept is None else rows.loss & kept[idx]
    batch.loss_mask[~torch.as_tensor(loss)] = 0.0
    return batch


def scatter_rows(row_stats: dict[str, np.ndarray], rows: BatchRows,
                 n: int) -> dict[str, np.ndarray]:
    """The update's per-row numbers as rollout columns over all sampled rows [n] (NaN for
    rows outside the batch)."""
    out = {k: np.full(n, np.nan, dtype=np.float32) for k in row_stats}
    for k, v in row_stats.items():
        out[k][rows.rows] = v
    return out


def gfpo_filter(r: Rollouts, s: Scored, cfg: RunConfig) -> np.ndarray | None:
    """GFPO's kept mask [N] (``algorithm.gfpo_keep`` per group), recorded as the rollout
    column ``gfpo_kept``; None when GFPO is off."""
    a = cfg.algorithm
    if a.gfpo_keep <= 0:
        return None
    kept = gfpo_keep_mask(torch.as_tensor(r.lengths), torch.as_tensor(s.rewards),
                          cfg.rollout.n, a.gfpo_keep, a.gfpo_metric).numpy()
    s.columns["gfpo_kept"] = kept
    return kept


def advantages(rewards: np.ndarray, truncated: np.ndarray, cfg: RunConfig,
               kept: np.ndarray | None = None) -> torch.Tensor:
    """Group-relative advantages [N] (a prompt's group lives on one rank); with
    ``mask_truncated_in_adv`` the group statistics use only completions that finished, with
    GFPO (``kept``) only the kept ones (the others get 0)."""
    a = cfg.algorithm
    valid = torch.as_tensor(~truncated) if a.mask_truncated_in_adv else None
    if kept is not None:
        valid = torch.as_tensor(kept) if valid is None else valid & torch.as_tensor(kept)
    return group_advantages(torch.tensor(rewards, dtype=torch.float32), cfg.rollout.n,
                            a.norm_adv_by_std, a.adv_eps, valid=valid,
                            estimator=a.adv_estimator)


def update(x: Setup, batch: Batch, cap: int,
           tally: Tally) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Reference log-probs if KL is on, then the policy update; stops a diverged run."""
    cfg, t = x.cfg, x.cfg.trainer
    ref_logp = None
    if x.models.reference is not None:
        ref_logp = logprobs_no_grad(x.models.reference, batch, t.micro_batch_size,
                                    cfg.rollout.temperature, t.group_by_length, x.d.device)
    stats, row_stats = train_on_batch(x.models.policy, batch, cfg, cap, x.d, ref_logp)
    tally.bad_updates += int(stats["train/skipped_updates"])
    stats["train/skipped_updates_total"] = float(tally.bad_updates)
    if tally.bad_updates > t.max_bad_steps:
        raise TrainingDiverged(
            f"{tally.bad_updates} optimiser updates had non-finite gradients and were skipped "
            f"(trainer.max_bad_steps={t.max_bad_steps}); lower trainer.lr (now {t.lr}) "
            f"or trainer.grad_clip (now {t.grad_clip}), and check the rewards")
    return stats, row_stats


def log_step(x: Setup, step: int, cap: int, r: Rollouts, s: Scored, adv: torch.Tensor,
             train_stats: dict[str, float], val_metrics: dict[str, float],
             timings: dict[str, float], step_start: float, tally: Tally) -> None:
    """Telemetry over the whole global batch: every rank's rows, then metrics and sinks."""
    cfg = x.cfg
    telemetry_start = time.perf_counter()
    tokens = token_columns(x, r) if cfg.logger.store_tokens else {}
    cols = gather_columns({
        "step": np.full(len(r.lengths), step, dtype=np.int32),
        "prompt_id": np.array(r.prompt_ids, dtype=np.int64),
        "sample": np.array([c.sample for c in r.completions], dtype=np.int16),
        "response_length": r.lengths.astype(np.int32),
        "truncated": r.truncated,
        "reward": s.rewards.astype(np.float32),
        "correct": s.correct.astype(np.float32),
        "advantage": adv.numpy().astype(np.float32),
        **{k: v.astype(np.float32) for k, v in s.components.items()},
        **s.columns,
        **tokens,
    }, x.d)
    group_ids = np.arange(len(cols["step"])) // cfg.rollout.n  # every rank's groups contiguous
    metrics = step_length_metrics(cols["response_length"], cols["truncated"], cols["reward"],
                                  group_ids, cols["correct"], cap)
    metrics.update({f"reward/{k}_mean": float(np.nanmean(cols[k])) for k in s.components})
    metrics.update(length_control_metrics(cols, cfg.rollout.n, cfg.trainer.prompts_per_step))
    tally.clip_ratios.append(metrics["length/clip_ratio"])
    metrics.update(train_stats)
    step_s = time.perf_counter() - step_start
    metrics.update({
        "reward/zero_std_frac": zero_std_group_fraction(torch.tensor(cols["reward"]),
                                                        cfg.rollout.n),
        **timings, "perf/step_s": step_s,
        "perf/tokens_per_s": float(cols["response_length"].sum()) / step_s,
        # gather + metrics of this step, plus the sinks' write time of the previous one
        "perf/telemetry_s": time.perf_counter() - telemetry_start + tally.last_log_s,
    })
    metrics.update(val_metrics)
    log_start = time.perf_counter()
    hists = length_histograms(cols["response_length"], cols["correct"], max(response_caps(cfg)))
    hists.update(pop_histograms(metrics))  # the probe's val/length/hist
    x.run.log(step, metrics, hists, cols, sample_rows(x, step, r, s))
    tally.last_log_s = time.perf_counter() - log_start


def token_columns(x: Setup, r: Rollouts) -> dict[str, np.ndarray]:
    """Each row's prompt and completion token ids and the sampler's log-prob of each
    completion token, as object arrays of lists [N]."""
    prompt_ids = x.inputs.prompts.prompt_ids
    out = {k: np.empty(len(r.completions), dtype=object)
           for k in ("prompt_tokens", "completion_tokens", "sampler_logprobs")}
    for i, (p, c) in enumerate(zip(r.prompt_ids, r.completions, strict=True)):
        out["prompt_tokens"][i] = list(prompt_ids[p])
        out["completion_tokens"][i] = list(c.token_ids)
        out["sampler_logprobs"][i] = list(c.logprobs)
    return out


def sample_rows(x: Setup, step: int, r: Rollouts, s: Scored) -> list[dict[str, Any]] | None:
    """Decoded completions for samples.jsonl and the W&B table, every ``sample_every`` steps."""
    lg = x.cfg.logger
    if lg.sample_every <= 0 or step % lg.sample_every != 0:
        return None
    texts = x.inputs.prompts.texts
    return [{"step": step, "prompt": texts[i], "completion": text, "length": int(n_tok),
             "truncated": bool(tr), "reward": float(rw)}
            for i, text, n_tok, tr, rw in list(zip(r.prompt_ids, r.texts, r.lengths,
                                                   r.truncated, s.rewards, strict=True))
            [: lg.samples_per_step]]


def checkpoint(x: Setup, step: int, sampler: PromptSampler, stop: StopRequest) -> None:
    """Save every ``save_every`` steps; on a signal (agreed by all ranks) save if asked, stop."""
    t = x.cfg.trainer
    saved = t.save_every > 0 and (step + 1) % t.save_every == 0
    if saved:
        x.run.save_checkpoint(x.models.policy, step, {"sampler": sampler.state_dict()})
    if stop.agreed(x.d):  # a signal arrived during this step, which is now complete
        if t.save_on_interrupt and not saved:
            x.run.save_checkpoint(x.models.policy, step, {"sampler": sampler.state_dict()})
        stop.stop_now()
