"""Every metric name a run logs (metrics.jsonl and W&B), what it measures and when it appears.

The single source of truth for the metric table on the documentation site (``docs/hooks.py``
renders :func:`markdown_table`) and for the test that checks real runs log nothing this
catalog lacks and nothing here is dead (``tests/integration/test_metric_catalog.py``).
Imported by the MkDocs hook, so it stays free of torch, numpy and the training code.

A name may be a pattern: ``{placeholder}`` stands for one path segment part, restricted by
:data:`PLACEHOLDERS` (``length/p{q}`` is ``length/p10`` ... ``length/p99``;
``reward/{component}_mean`` takes any reward component). A key that some exact name spells
is never taken by a pattern (``reward/truncated_mean`` is not a component).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

# What a ``{placeholder}`` in a name may stand for (regular expressions).
PLACEHOLDERS: dict[str, str] = {
    "q": "10|50|90|99",  # the percentiles step_length_metrics reports
    "component": "[A-Za-z0-9_]+",  # a reward function's dict key, or a length term's name
}


@dataclass(frozen=True)
class Metric:
    """One logged metric (or a family of them, when ``name`` holds a placeholder)."""

    name: str  # the key as logged, or a pattern such as ``length/p{q}``
    meaning: str  # one sentence: what is measured, over which completions
    when: str  # when the key is present in a step's record

    @property
    def prefix(self) -> str:
        """The group the docs list it under: the text up to the first ``/`` ("" for none)."""
        head, sep, _ = self.name.partition("/")
        return f"{head}/" if sep else ""

    @property
    def is_pattern(self) -> bool:
        return "{" in self.name

    def matches(self, key: str) -> bool:
        return _regex(self.name).fullmatch(key) is not None


@cache
def _regex(name: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", name)  # literal, placeholder, literal, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?:{PLACEHOLDERS[p]})"
                              for i, p in enumerate(parts)))


# --- when ------------------------------------------------------------------------------------

EVERY = "every step"
PROBE = "probe steps (every `trainer.val_every` steps and the last)"
WANDB = "W&B only"
CORRECTNESS = "when the reward reports correctness (a `correct` or `accuracy` component)"
DYNAMIC = "with dynamic sampling (`algorithm.dynamic_sampling=true`, on in `algorithm=dapo`)"
CORRECTION = "with a rollout correction (`algorithm.rollout_correction` other than `none`)"
BUDGET = "with `data.length_budget` (`length=l1_exact`, `length=l1_max`)"
CUDA = "CUDA devices only (absent on CPU)"

# --- what a batch of completions yields (training batch and probe alike) ---------------------

_TRAIN_BATCH = "the step's global batch"
_PROBE_BATCH = "the probe's completions"


def _batch_metrics(pre: str, batch: str, every: str) -> tuple[Metric, ...]:
    """The :func:`~grpo_cli.telemetry.length_metrics.step_length_metrics` keys over ``batch``
    (under ``pre``): written once for the training batch and the probe, so the two agree."""
    also = f"{every}; "
    return (
        Metric(f"{pre}length/mean", f"Mean generated tokens per completion (EOS included, no "
               f"padding) over {batch}.", every),
        Metric(f"{pre}length/std", f"Population standard deviation (ddof=0) of the "
               f"completion lengths over {batch}.", every),
        Metric(f"{pre}length/min", f"Shortest completion (tokens) in {batch}.", every),
        Metric(f"{pre}length/max", f"Longest completion (tokens) in {batch}.", every),
        Metric(f"{pre}length/p{{q}}", f"The q-th percentile (q in 10, 50, 90, 99; numpy's linear "
               f"interpolation) of the completion lengths over {batch}.", every),
        Metric(f"{pre}length/clip_ratio", f"Share of {batch} that the length cap stopped, "
               "taken from the engine's finish reason (never inferred from length == cap).",
               every),
        Metric(f"{pre}length/terminated_mean", f"Mean length of the completions of {batch} "
               "that ended on their own (not truncated).",
               f"{also}omitted when every completion was truncated"),
        Metric(f"{pre}length/correct_mean", f"Mean length of the correct completions "
               f"(correct >= 0.5) of {batch}.", f"{also}{CORRECTNESS}, and some are correct"),
        Metric(f"{pre}length/incorrect_mean", f"Mean length of the graded, incorrect "
               f"completions of {batch}.", f"{also}{CORRECTNESS}, and some are incorrect"),
        Metric(f"{pre}length/between_prompt_frac", f"Share of the length variance of {batch} "
               "that lies between prompts (variance of the prompt-group means over the total, "
               "population variances): near 1 the policy sets length by the problem; falling, "
               "it stopped adapting length to the prompt.",
               f"{also}omitted when every completion has the same length"),
        Metric(f"{pre}length/within_group_std", f"Root of the mean squared deviation of each "
               f"completion's length from its prompt group's mean, over {batch}: the spread "
               "GRPO's group-relative signal about length works with.", every),
        Metric(f"{pre}reward/mean", f"Mean final reward (the task reward plus every length "
               f"term) over {batch}.", f"{also}omitted when some reward is not finite"),
        Metric(f"{pre}reward/std", f"Population standard deviation (ddof=0) of the final "
               f"reward over {batch}.", f"{also}omitted when some reward is not finite"),
        Metric(f"{pre}reward/truncated_mean", f"Mean final reward of the truncated "
               f"completions (finish reason: the cap) of {batch}.",
               f"{also}when some completion was truncated"),
        Metric(f"{pre}corr/reward_length_pearson", f"Pearson correlation of final reward "
               f"and length across {batch}.",
               f"{also}omitted when reward or length is constant"),
        Metric(f"{pre}corr/reward_length_spearman", f"Spearman correlation (average ranks "
               f"for ties) of final reward and length across {batch}.",
               f"{also}omitted when reward or length is constant"),
        Metric(f"{pre}corr/within_group_spearman", f"Unweighted mean over the prompt groups "
               f"of {batch} of the Spearman correlation of reward and length inside each "
               "group; groups with constant reward or length are left out.",
               f"{also}when some group has varying reward and length"),
        Metric(f"{pre}corr/within_group_count", f"How many prompt groups of {batch} "
               f"`{pre}corr/within_group_spearman` averages.",
               f"{also}when some group has varying reward and length"),
    )


def _histograms(pre: str, batch: str, cap: str, every: str) -> tuple[Metric, ...]:
    """The W&B length histograms over ``batch``: 32 fixed bins from 0 to ``cap``."""
    edges = (f"over 32 fixed bins from 0 to {cap} (lengths above it in the last bin), so "
             "steps stack into a heat map")
    where = f"{every}; {WANDB}"
    return (
        Metric(f"{pre}length/hist", f"Histogram of the completion lengths of {batch}, "
               f"{edges}.", where),
        Metric(f"{pre}length/hist_correct", f"Histogram of the correct completions' lengths "
               f"of {batch}, same bins.", f"{where}; {CORRECTNESS}"),
        Metric(f"{pre}length/hist_incorrect", f"Histogram of the graded, incorrect "
               f"completions' lengths of {batch}, same bins.", f"{where}; {CORRECTNESS}"),
    )


METRICS: tuple[Metric, ...] = (
    # --- the step itself
    Metric("step", "Step number, from 0 (the same in metrics.jsonl and W&B).", EVERY),
    Metric("max_len", "Response cap in force this step: `data.max_response_length`, or the "
           "`length.schedule` stage's, or the adaptive (ThinkPrune) round's.", EVERY),
    Metric("samples", "Table of decoded completions (prompt, completion, length, truncated, "
           "reward), the first `logger.samples_per_step` of the step, also in samples.jsonl.",
           f"every `logger.sample_every` steps; {WANDB}"),
    # --- length/, reward/, corr/ over the training batch
    *_batch_metrics("", _TRAIN_BATCH, EVERY),
    *_histograms("", _TRAIN_BATCH, "the run's largest training cap", EVERY),
    Metric("reward/{component}_mean", "Mean over the step's global batch (rows "
           "lacking it left out) of one reward component: a key of the reward function's "
           "dict (e.g. `accuracy`, `format`) or a length term added to the reward "
           "(`overlong_penalty`, `length_penalty`, `stop_penalty`).",
           "every step, per component: with a reward function returning dicts, "
           "`length.overlong_buffer` > 0, `length.penalty` (after its warm-up steps), or a "
           "stop penalty"),
    Metric("reward/zero_std_frac", "Share of the step's prompt groups (every round) whose "
           "final rewards are all equal, so their advantages are 0 and they add no gradient.",
           EVERY),
    # --- length controls that add rollout columns
    Metric("budget/requested_mean", "Mean requested length N (the budget in each prompt) "
           "over the step's global batch.", BUDGET),
    Metric("budget/abs_error_mean", "Mean absolute difference between produced length and "
           "the requested budget N over the step's global batch.", BUDGET),
    Metric("budget/over_frac", "Share of the step's completions longer than their "
           "requested budget N.", BUDGET),
    Metric("budget/length_spearman", "Spearman correlation of requested budget N and "
           "produced length across the step's global batch (> 0: longer budgets get "
           "longer answers).", f"{BUDGET}; omitted when budget or length is constant"),
    Metric("gfpo/kept_length_mean", "Mean length of the completions GFPO keeps and trains on "
           "(`gfpo_kept`), beside `length/mean` over all G sampled.",
           "with GFPO (`algorithm.gfpo_keep` > 0, `length=gfpo`), when some row is kept"),
    # --- dynamic/: what DAPO's dynamic sampling drew and kept
    Metric("dynamic/rounds", "Sampling rounds of `trainer.prompts_per_step` prompts the step "
           "drew to fill its batch.", DYNAMIC),
    Metric("dynamic/groups_sampled", "Prompt groups sampled over all rounds and ranks.",
           DYNAMIC),
    Metric("dynamic/groups_kept", "Informative groups (passed the filter) the update "
           "trained on.", DYNAMIC),
    Metric("dynamic/groups_short", "`trainer.prompts_per_step` minus the groups kept: > 0 "
           "when the rounds ran out (`algorithm.dynamic_sampling_max_rounds`) and the batch "
           "trained on fewer groups.", DYNAMIC),
    Metric("dynamic/dropped_frac", "Share of the sampled groups the filter dropped "
           "(uninformative: constant reward or key, or outside the band).", DYNAMIC),
    Metric("dynamic/dropped_truncated_frac", "Of the dropped groups, the share whose every "
           "completion the cap stopped (the groups a truncation-heavy cap makes useless).",
           f"{DYNAMIC}, when some group was dropped"),
    Metric("dynamic/trained_length_mean", "Mean length of the completions the update "
           "trained on, beside `length/mean` over everything sampled.",
           f"{DYNAMIC}, when some group was kept"),
    Metric("dynamic/trained_clip_ratio", "Share of the trained completions that the cap "
           "stopped (finish reason), beside `length/clip_ratio` over everything sampled.",
           f"{DYNAMIC}, when some group was kept"),
    # --- entropy/: by outcome and by position along the response
    *(Metric(f"entropy/{name}_mean", f"Mean over the update batch's {what} of each one's "
             "mean token entropy (at the rollout temperature).", when)
      for name, what, when in (
          ("truncated", "completions the cap cut", "every step; when some row was truncated"),
          ("finished", "completions that ended on their own",
           "every step; when some row ended on its own"),
          ("correct", "correct completions", f"{CORRECTNESS}, and some are correct"),
          ("incorrect", "graded, incorrect completions", f"{CORRECTNESS}, and some are "
           "incorrect"))),
    Metric("entropy/first_quarter_mean", "Mean over the update batch's completions of the mean "
           "token entropy over each one's first quarter of tokens (ceil(L/4)).", EVERY),
    Metric("entropy/last_quarter_mean", "Mean over the update batch's completions of the mean "
           "token entropy over each one's last quarter of tokens (ceil(L/4)): a collapse shows "
           "here first, at the end of long answers.", EVERY),
    # --- mismatch/: sampler vs trainer at the weights that sampled
    Metric("mismatch/logratio_length_spearman", "Spearman correlation, over the update "
           "batch's rows, of each row's summed log-ratio (trainer minus sampler log-probs at "
           "the weights that sampled) and its length.",
           "every step; omitted when the log-ratios or lengths are constant"),
    Metric("mismatch/weight_mean", "Mean correction weight per generated token over the "
           "update batch's rows.", CORRECTION),
    Metric("mismatch/token_masked_frac", "Share of the update batch's generated tokens the "
           "correction gave weight 0.", CORRECTION),
    Metric("mismatch/seq_masked_frac", "Share of the update batch's rows whose every "
           "generated token got weight 0.", CORRECTION),
    Metric("mismatch/masked_frac_truncated", "Share of weight-0 tokens among the update "
           "batch's completions that the cap stopped.",
           f"{CORRECTION}, when the batch holds a truncated completion"),
    Metric("mismatch/masked_frac_finished", "Share of weight-0 tokens among the update "
           "batch's completions that ended on their own.",
           f"{CORRECTION}, when the batch holds a finished completion"),
    Metric("rollout/logprob_diff", "Mean absolute difference of sampler and trainer log-probs "
           "per generated token of the update batch, at the weights that sampled (~3e-7 in "
           "fp32 when the weight push is right).", EVERY),
    # --- the update
    Metric("loss/pg", "The loss the optimiser minimised (clipped surrogate with the loss "
           "aggregation's weights, times correction weights, plus `kl_coef` x KL), summed over "
           "ranks and micro-batches, mean over the step's `trainer.updates_per_batch` updates.",
           EVERY),
    Metric("policy/entropy", "Mean policy entropy (at the rollout temperature) per token that "
           "carries loss, over every update of the step.", EVERY),
    Metric("policy/clip_frac", "Share of loss-carrying tokens where PPO's clipped branch won "
           "(no gradient), over every update of the step.", EVERY),
    Metric("policy/kl", "Mean k3 estimate of KL(policy || reference) per loss-carrying token, "
           "over every update of the step.", "with `algorithm.kl_coef` > 0"),
    Metric("train/grad_norm", "DeepSpeed's global gradient 2-norm, mean over the step's "
           "optimiser updates that reported a finite one.",
           "when DeepSpeed's optimiser reports a norm: `trainer.zero_stage` 1-3 (bf16 models "
           "run at stage 1 at least); an fp32 model at stage 0 gets none"),
    Metric("train/skipped_updates", "Optimiser updates of this step skipped for non-finite "
           "gradients.", EVERY),
    Metric("train/skipped_updates_total", "Skipped updates since the training process "
           "started (a resumed run counts afresh); past `trainer.max_bad_steps` the run stops.",
           EVERY),
    # --- perf/
    Metric("perf/rollout_s", "Seconds from the step's start (after the probe) to the update: "
           "sampling, scoring, every dynamic-sampling round, advantages and batch building.",
           EVERY),
    Metric("perf/train_s", "Seconds of the update: reference log-probs (KL) and the "
           "optimiser steps.", EVERY),
    Metric("perf/rollout_tail_frac", "Share of rank 0's sampling time spent after 90% of each "
           "sampling call's completions had ended: the decode steps a generous cap spends on "
           "its longest answers.", "every step with the hf backend's decode loop (text, "
           "`rollout.drop_finished=true`, the default) or vLLM (each completion's end as its "
           "request finishes); not with transformers `generate` (vision batches, "
           "`rollout.drop_finished=false`)"),
    Metric("perf/step_s", "Seconds from the step's start (after the probe) to its metrics: "
           "rollout, update, gathering the global batch and computing the telemetry.", EVERY),
    Metric("perf/tokens_per_s", "Generated tokens of the step's global batch (every "
           "round) per second of `perf/step_s`.", EVERY),
    Metric("perf/telemetry_s", "Seconds of this step's gather and metrics plus the sinks' "
           "write of the previous step.", EVERY),
    Metric("perf/gpu_peak_gib", "Most GPU memory (GiB) torch held at once on any rank since "
           "the step began, probe included (vLLM's own pool not counted).", CUDA),
    # --- val/: the natural-length probe
    Metric("val/max_len", "The probe's cap: `val.max_len`, or 4x the largest training cap, "
           "bounded by the model's context.", PROBE),
    Metric("val/accuracy", f"Share of correct completions (correct >= 0.5) among the graded "
           f"ones of {_PROBE_BATCH}.", f"{PROBE}; {CORRECTNESS}"),
    *_batch_metrics("val/", _PROBE_BATCH, PROBE),
    *_histograms("val/", _PROBE_BATCH, "the probe cap", PROBE),
)

# A line under a section's heading in the docs: what its entries share.
SECTIONS: dict[str, str] = {
    "length/": "Over the step's global batch: every rank's completions and, with dynamic "
               "sampling, every round. A length counts the generated tokens, EOS included, "
               "without padding; truncated means the engine's finish reason says the cap "
               "stopped the completion. A key undefined for a batch is left out, never NaN or "
               "0. The histograms go to W&B only (the rollout rows hold their data).",
    "reward/": "The final reward is the task reward plus every length term, over the step's "
               "global batch.",
    "dynamic/": "What DAPO's dynamic sampling drew and kept, over all ranks and rounds; "
                "`length/`, `reward/` and `corr/` still cover everything sampled.",
    "mismatch/": "Sampler against trainer at the weights that sampled, over the rows of the "
                 "update batch (rollout columns `logratio_sum`, `is_weight_sum`, "
                 "`is_masked_tokens`).",
    "entropy/": "Each completion counted once (its mean token entropy, rollout columns "
                "`entropy`, `entropy_first_quarter`, `entropy_last_quarter`), over the rows "
                "of the update batch, at the weights of the row's update.",
    "policy/": "Reduced over ranks: per token that carries loss, over every update of the step.",
    "perf/": "Wall-clock seconds of rank 0 (the ranks run in step).",
    "val/": "The natural-length probe: the same `val.num_prompts` held-out prompts, `val.n` "
            "samples each with the same seed every time, from the policy before the step's "
            "update, at the probe cap `val/max_len`. Each key means what the training key of "
            "the same name means, over these completions.",
}

# The order of the docs' sections; a prefix left out comes after these.
PREFIX_ORDER: tuple[str, ...] = ("", "length/", "reward/", "corr/", "budget/", "gfpo/",
                                 "dynamic/", "mismatch/", "entropy/", "rollout/", "loss/",
                                 "policy/", "train/", "perf/", "val/")


@cache
def _exact() -> dict[str, Metric]:
    return {m.name: m for m in METRICS if not m.is_pattern}


def match(key: str) -> Metric | None:
    """The catalog entry of a concrete logged key (an exact name first, then the patterns),
    or None when the catalog does not know it."""
    exact = _exact().get(key)
    if exact is not None:
        return exact
    return next((m for m in METRICS if m.is_pattern and m.matches(key)), None)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(prefix_order: Sequence[str] = PREFIX_ORDER, heading_level: int = 3) -> str:
    """A heading and a ``| metric | meaning | logged |`` table per prefix, in ``prefix_order``
    (prefixes it leaves out follow in catalog order), every entry once."""
    known = list(dict.fromkeys(m.prefix for m in METRICS))
    unknown = [p for p in prefix_order if p not in known]
    if unknown:
        raise ValueError(f"prefix_order names {unknown}, which no metric has; known: {known}")
    order = list(dict.fromkeys([*prefix_order, *known]))
    hashes = "#" * heading_level
    out: list[str] = []
    for prefix in order:
        out.append(f"{hashes} `{prefix}`\n" if prefix else f"{hashes} Without a prefix\n")
        if prefix in SECTIONS:
            out.append(SECTIONS[prefix] + "\n")
        out.append("| metric | meaning | logged |\n|---|---|---|")
        out.extend(f"| `{m.name}` | {_cell(m.meaning)} | {_cell(m.when)} |"
                   for m in METRICS if m.prefix == prefix)
        out.append("")
    return "\n".join(out)
