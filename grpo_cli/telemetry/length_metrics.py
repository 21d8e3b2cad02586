"""Per-step response-length telemetry over the whole global batch (pure numpy).

The caller gathers every rank's completions first: a per-rank mean/min/max averaged across ranks
is not the batch's mean/min/max (TRL's "max" is an average of maxima). Metric names follow
DESIGN.md so metrics.jsonl and W&B agree.
"""

from __future__ import annotations

import numpy as np

_PERCENTILES = (10, 50, 90, 99)
# What `step_length_metrics` takes from `grouped_length_stats` (the report uses them all).
_STEP_KEYS = ("length/mean", *(f"length/p{q}" for q in _PERCENTILES), "length/clip_ratio",
              "length/terminated_mean", "length/correct_mean", "length/incorrect_mean",
              "reward/mean", "reward/std", "reward/truncated_mean")


def step_length_metrics(
    lengths: np.ndarray,
    truncated: np.ndarray,
    rewards: np.ndarray,
    group_ids: np.ndarray,
    correct: np.ndarray | None,
    max_len: int,
) -> dict[str, float]:
    """Length, reward and reward-length correlation metrics for one training step.

    Args:
        lengths: (N,) generated tokens per completion (EOS included, no padding).
        truncated: (N,) bool, True when the engine stopped the completion at the length cap
            (its finish reason). Never inferred from ``length == max_len``: a completion that
            ends with EOS exactly at the cap terminated, and one cut by another limit is not
            at the cap.
        rewards: (N,) scalar rewards.
        group_ids: (N,) prompt group of each completion (any integers).
        correct: (N,) 1.0/0.0 correctness with NaN for unknown, or None when no grader
            reports correctness. ``correct >= 0.5`` counts as correct.
        max_len: the response cap in force this step (logged as ``max_len``).

    Returns:
        ``length/{mean,std,min,max,p10,p50,p90,p99,clip_ratio,terminated_mean,correct_mean,
        incorrect_mean}``, ``reward/{mean,std,truncated_mean}``,
        ``corr/{reward_length_pearson,reward_length_spearman,within_group_spearman,
        within_group_count}`` and ``max_len``.

        Standard deviations are population (ddof=0) over the batch; percentiles use numpy's
        linear interpolation. Spearman uses average ranks for ties (as scipy.stats.spearmanr).
        ``corr/within_group_spearman`` is the unweighted mean over groups of the Spearman
        correlation between reward and length inside each group; groups where reward or
        length is constant (including single-completion groups) are skipped, and
        ``corr/within_group_count`` says how many groups were used.

        A metric that is undefined for this batch is OMITTED, never NaN and never a stand-in
        0: ``reward/truncated_mean`` with no truncated completion, ``length/terminated_mean``
        when all are truncated, ``length/correct_mean``/``length/incorrect_mean`` without
        known correct/incorrect completions, batch correlations when reward or length is
        constant, ``corr/within_group_*`` when no group qualifies, and everything but
        ``max_len`` for an empty batch. Non-finite inputs (e.g. a NaN reward) make the
        affected metrics omitted too. Consumers test ``key in metrics``.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    truncated = np.asarray(truncated, dtype=bool)
    rewards = np.asarray(rewards, dtype=np.float64)
    group_ids = np.asarray(group_ids)
    n = lengths.shape[0]
    arrays = {"lengths": lengths, "truncated": truncated, "rewards": rewards,
              "group_ids": group_ids}
    if correct is not None:
        correct = np.asarray(correct, dtype=np.float64)
        arrays["correct"] = correct
    for name, arr in arrays.items():
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")

    out: dict[str, float] = {"max_len": int(max_len)}
    if n == 0:
        return out

    stats = grouped_length_stats(np.zeros(n, dtype=np.int64), 1, lengths, truncated, rewards,
                                 correct, _PERCENTILES)
    out.update({k: float(v[0]) for k, v in stats.items() if k in _STEP_KEYS})
    out["length/std"] = float(lengths.std())
    out["length/min"] = int(lengths.min())
    out["length/max"] = int(lengths.max())
    if not np.isfinite(rewards).all():  # reward statistics of a batch with a NaN reward
        out = {k: v for k, v in out.items() if not k.startswith("reward/")}

    whole = np.zeros(n, dtype=np.int64)
    flat = np.array([np.ptp(rewards) == 0 or np.ptp(lengths) == 0])
    pearson = _grouped_pearson(rewards, lengths, whole, flat)
    if pearson.size:
        out["corr/reward_length_pearson"] = float(pearson[0])
    spearman = _grouped_spearman(rewards, lengths, whole)
    if spearman.size:
        out["corr/reward_length_spearman"] = float(spearman[0])
    _, dense = np.unique(group_ids, return_inverse=True)
    per_group = _grouped_spearman(rewards, lengths, dense.reshape(-1))
    if per_group.size:
        out["corr/within_group_spearman"] = float(per_group.mean())
        out["corr/within_group_count"] = int(per_group.size)
    out.update(length_variance_split(lengths, dense.reshape(-1)))
    return {k: v for k, v in out.items() if np.isfinite(v)}


def length_variance_split(lengths: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Where one batch's length variance lives (see :func:`grouped_variance_split`):
    ``length/between_prompt_frac`` and ``length/within_group_std``, omitted where undefined.

    Args:
        lengths: [N] generated tokens per completion.
        groups: [N] dense prompt-group index 0..k-1 of each completion.
    """
    if np.asarray(lengths).shape[0] == 0:
        return {}
    split = grouped_variance_split(np.zeros(len(groups), dtype=np.int64), 1, groups, lengths)
    return {k: float(v[0]) for k, v in split.items() if np.isfinite(v[0])}


def grouped_variance_split(
    inv: np.ndarray,  # [N] batch (step) index of each completion, 0..k-1
    k: int,
    groups: np.ndarray,  # [N] prompt-group id of each completion (any integers)
    lengths: np.ndarray,  # [N]
) -> dict[str, np.ndarray]:
    """Between-prompt vs within-group length variance of k batches at once ([k] each): one
    step's batch in the loop, every step of a run in the report, by the same code.

    With population variances (ddof=0) a batch's variance splits exactly (the law of total
    variance): between = sum_g n_g (mean_g - mean)^2 / N, within = sum_g sum_i (len_i -
    mean_g)^2 / N. ``length/between_prompt_frac`` = between / (between + within), an
    intra-class correlation: near 1 the policy sets length by the problem; a falling share
    means it stopped adapting length to the prompt (NaN when every length is equal).
    ``length/within_group_std`` = sqrt(within): the spread inside prompt groups, which GRPO's
    group-relative signal about length feeds on (0: within a group no completion is longer
    than another, nothing to learn about length).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    inv = np.asarray(inv, dtype=np.int64)
    # one cell per (batch, prompt group), from one sort of a 1-D key; cell_of[i]: row i's cell
    groups = np.asarray(groups, dtype=np.int64)
    low = int(groups.min()) if groups.size else 0
    span = int(groups.max()) - low + 1 if groups.size else 1
    keys, cell_of = np.unique(inv * span + (groups - low), return_inverse=True)
    cell_of = cell_of.reshape(-1)
    cells = keys.shape[0]
    cell_batch = keys // span  # [cells]
    cell_n = np.bincount(cell_of, minlength=cells).astype(np.float64)  # [cells]
    cell_mean = np.bincount(cell_of, lengths, minlength=cells) / np.maximum(cell_n, 1.0)
    n = np.bincount(inv, minlength=k).astype(np.float64)  # [k]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(inv, lengths, minlength=k) / n  # [k]
        within = np.bincount(inv, (lengths - cell_mean[cell_of]) ** 2, minlength=k) / n
        between = np.bincount(cell_batch, cell_n * (cell_mean - mean[cell_batch]) ** 2,
                              minlength=k) / n
        total = between + within
        frac = np.where(total > 0, between / total, np.nan)
    return {"length/between_prompt_frac": frac, "length/within_group_std": np.sqrt(within)}


def grouped_length_stats(
    inv: np.ndarray,  # [N] group index of each completion, 0..k-1
    k: int,
    lengths: np.ndarray,  # [N]
    truncated: np.ndarray,  # [N] bool
    rewards: np.ndarray,  # [N]; non-finite rewards are left out of the reward statistics
    correct: np.ndarray | None,  # [N] 1/0, NaN unknown; None: no grader reports it
    percentiles: tuple[int, ...] = (10, 50, 90),
) -> dict[str, np.ndarray]:
    """Length, truncation, reward and accuracy statistics of k groups at once ([k] each, NaN
    where a group has nothing to average), with bincounts: one step's global batch (k=1) in
    the loop, every step of a run (a group per step) in the report, by the same code.

    Standard deviations are population (ddof=0), percentiles numpy's linear interpolation,
    ``correct >= 0.5`` counts as correct.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    trunc = np.asarray(truncated, dtype=bool)
    n = np.bincount(inv, minlength=k).astype(np.float64)
    everyone = np.ones(lengths.shape[0], dtype=bool)
    out: dict[str, np.ndarray] = {"completions": n}
    out["length/mean"] = _group_mean(inv, lengths, everyone, k)
    for q, values in grouped_percentiles(inv, lengths, percentiles, k).items():
        out[f"length/p{q}"] = values
    with np.errstate(invalid="ignore", divide="ignore"):
        out["length/clip_ratio"] = np.bincount(inv, trunc.astype(np.float64), k) / n
    out["length/terminated_mean"] = _group_mean(inv, lengths, ~trunc, k)
    finite = np.isfinite(rewards)
    mean = _group_mean(inv, rewards, finite, k)
    out["reward/mean"] = mean
    centred = np.where(finite, rewards - mean[inv], 0.0)  # two-pass: no cancellation
    out["reward/std"] = np.sqrt(_group_mean(inv, centred**2, finite, k))
    out["reward/truncated_mean"] = _group_mean(inv, rewards, finite & trunc, k)
    out["reward/terminated_mean"] = _group_mean(inv, rewards, finite & ~trunc, k)
    if correct is not None:
        correct = np.asarray(correct, dtype=np.float64)
        known = np.isfinite(correct)
        right = known & (correct >= 0.5)
        out["accuracy"] = _group_mean(inv, right.astype(np.float64), known, k)
        out["length/correct_mean"] = _group_mean(inv, lengths, right, k)
        out["length/incorrect_mean"] = _group_mean(inv, lengths, known & ~right, k)
    return out


def _group_mean(inv: np.ndarray, values: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """Per-group mean of ``values[mask]`` [k]; NaN for groups with no selected row."""
    count = np.bincount(inv[mask], minlength=k).astype(np.float64)
    total = np.bincount(inv[mask], values[mask], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def grouped_percentiles(
    inv: np.ndarray, values: np.ndarray, qs: tuple[int, ...], k: int
) -> dict[int, np.ndarray]:
    """Percentiles per group with numpy's linear interpolation, from one lexsort."""
    order = np.lexsort((values, inv))
    ordered = values[order]
    counts = np.bincount(inv, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = {}
    for q in qs:
        pos = (counts - 1).clip(min=0) * (q / 100.0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.ceil(pos).astype(np.int64)
        frac = pos - lo
        last = max(ordered.shape[0] - 1, 0)
        a = ordered[np.minimum(starts + lo, last)]
        b = ordered[np.minimum(starts + hi, last)]
        out[q] = np.where(counts > 0, a + (b - a) * frac, np.nan)
    return out


def length_histogram(
    lengths: np.ndarray, max_len: int, num_bins: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Counts over FIXED edges ``linspace(0, max_len, num_bins + 1)``.

    Fixed edges make histograms of different steps comparable (W&B stacks them into a heat
    map), unlike numpy's default data-dependent edges. Bins are half-open except the last,
    which is closed, so a completion of exactly ``max_len`` lands in the last bin; lengths
    above ``max_len`` (a cap lowered by a schedule, or an engine that overshot) are counted
    in the last bin too, so the counts always sum to the batch size. A schedule that changes
    the cap changes the edges from that step on.
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    edges = np.linspace(0.0, float(max_len), num_bins + 1)
    clipped = np.clip(np.asarray(lengths, dtype=np.float64), 0.0, float(max_len))
    counts, _ = np.histogram(clipped, bins=edges)
    return counts.astype(np.int64), edges


def _grouped_ranks(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based, ties averaged) of ``values`` within each group, vectorised.

    Also returns, per group id, whether the group holds a single distinct value.
    """
    n = values.shape[0]
    order = np.lexsort((values, groups))
    sv, sg = values[order], groups[order]
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (sv[1:] != sv[:-1]) | (sg[1:] != sg[:-1])
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = sg[1:] != sg[:-1]
    run_starts = np.flatnonzero(new_run)
    run_ends = np.append(run_starts[1:], n)
    run_of = np.cumsum(new_run) - 1
    group_start = np.flatnonzero(new_group)[np.cumsum(new_group) - 1]
    ranks_sorted = (run_starts + run_ends - 1)[run_of] / 2.0 - group_start + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    runs_per_group = np.bincount(sg[new_run], minlength=int(groups.max()) + 1)
    return ranks, runs_per_group == 1


def _grouped_pearson(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, constant: np.ndarray
) -> np.ndarray:
    """Pearson correlation per group (dense ids), skipping groups flagged ``constant``."""
    num_groups = constant.shape[0]
    count = np.bincount(groups, minlength=num_groups).astype(np.float64)
    safe = np.maximum(count, 1.0)
    dx = x - (np.bincount(groups, weights=x, minlength=num_groups) / safe)[groups]
    dy = y - (np.bincount(groups, weights=y, minlength=num_groups) / safe)[groups]
    cov = np.bincount(groups, weights=dx * dy, minlength=num_groups)
    vx = np.bincount(groups, weights=dx * dx, minlength=num_groups)
    vy = np.bincount(groups, weights=dy * dy, minlength=num_groups)
    ids = np.flatnonzero(~constant & (count > 1) & (vx > 0) & (vy > 0))
    return np.clip(cov[ids] / np.sqrt(vx[ids] * vy[ids]), -1.0, 1.0)


def _grouped_spearman(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Spearman correlation per group: Pearson of within-group average ranks."""
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return np.empty(0)
    rx, cx = _grouped_ranks(x, groups)
    ry, cy = _grouped_ranks(y, groups)
    return _grouped_pearson(rx, ry, groups, cx | cy)


def budget_metrics(lengths: np.ndarray, budgets: np.ndarray) -> dict[str, float]:
    """L1 budget adherence of one step's batch: requested (N, the prompt's budget) vs
    produced length, both [N].

    ``budget/requested_mean`` (mean N), ``budget/abs_error_mean`` (mean |len - N|),
    ``budget/over_frac`` (share with len > N) and ``budget/length_spearman`` (Spearman
    correlation of N and len across the batch: > 0 when longer budgets get longer answers;
    omitted when either is constant). An empty batch gives {}.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    budgets = np.asarray(budgets, dtype=np.float64)
    if lengths.shape != budgets.shape:
        raise ValueError(f"budgets has shape {budgets.shape}, lengths {lengths.shape}")
    if lengths.size == 0:
        return {}
    out = {"budget/requested_mean": float(budgets.mean()),
           "budget/abs_error_mean": float(np.abs(lengths - budgets).mean()),
           "budget/over_frac": float((lengths > budgets).mean())}
    rho = _grouped_spearman(budgets, lengths, np.zeros(lengths.size, dtype=np.int64))
    if rho.size and np.isfinite(rho[0]):
        out["budget/length_spearman"] = float(rho[0])
    return out


def length_control_metrics(cols: dict[str, np.ndarray], group_size: int,
                           batch_groups: int) -> dict[str, float]:
    """Metrics of the controls that add rollout columns: L1's budget adherence (``budget``,
    :func:`budget_metrics`), GFPO's filter (``gfpo_kept``): ``gfpo/kept_length_mean``, the
    mean length of the completions the update trains on, beside ``length/mean`` over all G
    sampled; dynamic sampling (:func:`dynamic_sampling_metrics`), the sampler-trainer
    mismatch (:func:`mismatch_metrics`) and the entropy by outcome and position
    (:func:`entropy_metrics`)."""
    out: dict[str, float] = {}
    if "budget" in cols:
        out.update(budget_metrics(cols["response_length"], cols["budget"]))
    if "gfpo_kept" in cols:
        kept = np.asarray(cols["gfpo_kept"], dtype=bool)
        if kept.any():
            out["gfpo/kept_length_mean"] = float(
                np.asarray(cols["response_length"], dtype=np.float64)[kept].mean())
    if "trained" in cols:
        out.update(dynamic_sampling_metrics(cols, group_size, batch_groups))
    if "logratio_sum" in cols:
        out.update(mismatch_metrics(cols))
    if "entropy" in cols:
        out.update(entropy_metrics(cols))
    return out


def entropy_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
    """The policy's entropy by outcome and by position along the response, over the rows of
    the update batch (``entropy`` finite), each completion counted once (the mean over
    completions of each one's mean token entropy, from the columns the update writes).

    ``entropy/truncated_mean`` / ``entropy/finished_mean``: completions the cap cut vs those
    that ended; ``entropy/correct_mean`` / ``entropy/incorrect_mean`` (with a ``correct``
    column); ``entropy/first_quarter_mean`` / ``entropy/last_quarter_mean``: over the first
    and the last quarter of each completion's tokens. Each omitted without such rows."""
    entropy = np.asarray(cols["entropy"], dtype=np.float64)
    rows = np.isfinite(entropy)
    if not rows.any():
        return {}
    truncated = np.asarray(cols["truncated"], dtype=bool)
    parts = {"truncated": rows & truncated, "finished": rows & ~truncated}
    if "correct" in cols:
        correct = np.asarray(cols["correct"], dtype=np.float64)
        parts["correct"] = rows & np.isfinite(correct) & (correct >= 0.5)
        parts["incorrect"] = rows & np.isfinite(correct) & (correct < 0.5)
    out = {f"entropy/{name}_mean": float(entropy[part].mean())
           for name, part in parts.items() if part.any()}
    for name in ("first_quarter", "last_quarter"):
        values = np.asarray(cols[f"entropy_{name}"], dtype=np.float64)[rows]
        out[f"entropy/{name}_mean"] = float(values.mean())
    return out


def dynamic_sampling_metrics(cols: dict[str, np.ndarray], group_size: int,
                             batch_groups: int) -> dict[str, float]:
    """What DAPO's dynamic sampling drew and kept, over the whole global step (all ranks,
    all rounds), from the rollout columns ``round``, ``informative`` and ``trained``.

    ``dynamic/rounds``; ``dynamic/groups_sampled``; ``dynamic/groups_kept`` (informative
    groups the update trained on); ``dynamic/groups_short`` (``batch_groups`` minus kept:
    > 0 when the rounds ran out and the batch trained on fewer); ``dynamic/dropped_frac``
    (uninformative groups / sampled); ``dynamic/dropped_truncated_frac`` (of the dropped
    groups, the share whose every completion the cap cut: the groups a truncation-heavy
    cap makes useless; omitted when none was dropped); ``dynamic/trained_length_mean`` and
    ``dynamic/trained_clip_ratio`` over the trained completions, beside ``length/mean`` and
    ``length/clip_ratio``, which cover everything sampled."""
    lengths = np.asarray(cols["response_length"], dtype=np.float64)
    truncated = np.asarray(cols["truncated"], dtype=bool)
    trained = np.asarray(cols["trained"], dtype=bool)
    informative = np.asarray(cols["informative"], dtype=bool).reshape(-1, group_size)[:, 0]
    all_cut = truncated.reshape(-1, group_size).all(axis=1)  # [groups]
    kept = int(trained.sum()) // group_size
    out = {"dynamic/rounds": float(np.asarray(cols["round"]).max() + 1),
           "dynamic/groups_sampled": float(informative.size),
           "dynamic/groups_kept": float(kept),
           "dynamic/groups_short": float(batch_groups - kept),
           "dynamic/dropped_frac": float((~informative).mean())}
    if (~informative).any():
        out["dynamic/dropped_truncated_frac"] = float(all_cut[~informative].mean())
    if trained.any():
        out["dynamic/trained_length_mean"] = float(lengths[trained].mean())
        out["dynamic/trained_clip_ratio"] = float(truncated[trained].mean())
    return out


def mismatch_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
    """The sampler-trainer mismatch against length, over the rows of the update batch
    (``logratio_sum`` finite), from the columns the update writes before its first step.

    ``mismatch/logratio_length_spearman``: Spearman correlation of a sequence's summed
    log-ratio (trainer minus sampler) and its length (omitted when either is constant).
    With a correction (``is_weight_sum``, ``is_masked_tokens``): ``mismatch/weight_mean``
    (per generated token), ``mismatch/token_masked_frac`` (tokens given weight 0),
    ``mismatch/seq_masked_frac`` (sequences with every token at 0) and
    ``mismatch/masked_frac_truncated`` / ``mismatch/masked_frac_finished``: the masked token
    share among completions the cap cut vs those that ended (each omitted without such
    rows)."""
    logratio = np.asarray(cols["logratio_sum"], dtype=np.float64)
    rows = np.isfinite(logratio)
    if not rows.any():
        return {}
    lengths = np.asarray(cols["response_length"], dtype=np.float64)[rows]
    out: dict[str, float] = {}
    rho = _grouped_spearman(logratio[rows], lengths, np.zeros(lengths.size, dtype=np.int64))
    if rho.size and np.isfinite(rho[0]):
        out["mismatch/logratio_length_spearman"] = float(rho[0])
    if "is_weight_sum" not in cols:
        return out
    weights = np.asarray(cols["is_weight_sum"], dtype=np.float64)[rows]
    masked = np.asarray(cols["is_masked_tokens"], dtype=np.float64)[rows]
    truncated = np.asarray(cols["truncated"], dtype=bool)[rows]
    out.update({"mismatch/weight_mean": float(weights.sum() / lengths.sum()),
                "mismatch/token_masked_frac": float(masked.sum() / lengths.sum()),
                "mismatch/seq_masked_frac": float((masked == lengths).mean())})
    for name, part in (("truncated", truncated), ("finished", ~truncated)):
        if part.any():
            out[f"mismatch/masked_frac_{name}"] = float(masked[part].sum() / lengths[part].sum())
    return out
