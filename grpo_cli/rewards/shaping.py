"""Length shaping terms and cap schedules: pure functions of generated-token lengths.

Formulas (LITERATURE.md): DAPO's soft overlong punishment (Yu et al. 2025), the cosine
length-scaled reward (Yeo et al. 2025), Kimi k1.5's group length reward, a plain linear
penalty, and staged caps (DeepScaleR grows them, ThinkPrune tightens them). The
group-relative rewards no framework offers: ShorterBetter (Yi et al. 2025), Arora & Zanette
2025, L1/LCPO-Exact and -Max (Aggarwal & Welleck 2025); ProRL's stop-properly penalty; and
ThinkPrune's adaptive rounds of shrinking caps (Hou et al. 2025). Lengths are generated
tokens (EOS included, no padding) as 1-D tensors [B]; results are float32 [B].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SCHEDULE_MODES = ("step", "linear")  # cap_at_step; "adaptive" is adaptive_cap


def _lengths(lengths: torch.Tensor) -> torch.Tensor:
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    return lengths.float()


def _positive_cap(max_len: int) -> None:
    if not max_len > 0:
        raise ValueError(f"max_len={max_len}: the response cap must be > 0")


def overlong_penalty(
    lengths: torch.Tensor,  # [B]
    max_len: int,
    buffer: int,
    factor: float = 1.0,
) -> torch.Tensor:  # [B]
    """DAPO soft overlong punishment, added to the task reward.

    0 if len <= L - B; ((L - B) - len) / B * factor if L - B < len <= L (reaching -factor at
    the cap); -factor if len > L. verl's scaled form min(-(len - (L - B)) / B * f, 0) is the
    same inside the cap. ``buffer`` must satisfy 0 < B <= L; ``length.overlong_buffer=0``
    means "disabled" and the caller then adds no term at all (this function rejects it).

    Checked against: DAPO (arXiv 2503.14476), "overlong reward shaping"; veRL
    ``verl/workers/reward_manager/dapo.py`` (``DAPORewardManager.__call__``).
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"length.overlong_buffer={buffer}: must be in (0, max_len={max_len}]")
    x = _lengths(lengths)  # [B]
    start = max_len - buffer
    ramp = (start - x) / buffer * factor  # [B]
    out = torch.where(x <= start, torch.zeros_like(x), ramp)
    return torch.where(x > max_len, torch.full_like(x, -factor), out)


def _cos_fn(t: torch.Tensor, total: float, start: float, end: float) -> torch.Tensor:
    """CosFn(t, T, a, b) = b + (a - b)/2 (1 + cos(t pi / T)): a at t=0, b at t=T."""
    return end + 0.5 * (start - end) * (1.0 + torch.cos(t * math.pi / total))


def cosine_length_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    truncated: torch.Tensor,  # [B] bool
    max_len: int,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    r_exceed: float = -10.0,
) -> torch.Tensor:  # [B]
    """Cosine length-scaled reward (Yeo et al. 2025, "Demystifying Long CoT Reasoning").

    Correct: CosFn(len, L, r0_correct, rL_correct), short answers earn more; wrong:
    CosFn(len, L, r0_wrong, rL_wrong), long wrong answers lose less (keep thinking);
    truncated: r_exceed whatever the answer. Lengths past L that were not truncated are read
    as L. Yeo et al. warn that r0_correct < rL_correct makes length grow explosively.

    Checked against: open-r1 ``src/open_r1/rewards.py`` (``get_cosine_scaled_reward``, which
    counts characters with a 1000-character L; here tokens and the cap in force).
    """
    _positive_cap(max_len)
    t = _lengths(lengths).clamp(max=max_len)  # [B]
    right = _cos_fn(t, max_len, r0_correct, rL_correct)  # [B]
    wrong = _cos_fn(t, max_len, r0_wrong, rL_wrong)  # [B]
    out = torch.where(correct.bool(), right, wrong)
    return torch.where(truncated.bool(), torch.full_like(out, r_exceed), out)


def _group_rows(lengths: torch.Tensor, correct: torch.Tensor,
                group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths and correctness [B] -> [g, G] float / bool (rows g*G .. g*G+G-1 a group)."""
    x = _lengths(lengths)  # [B]
    if group_size < 1 or x.numel() % group_size != 0:
        raise ValueError(
            f"batch of {x.numel()} lengths is not a whole number of groups of {group_size}"
        )
    if correct.shape != lengths.shape:
        raise ValueError(f"correct has shape {tuple(correct.shape)}, lengths "
                         f"{tuple(lengths.shape)}")
    return x.reshape(-1, group_size), correct.bool().reshape(-1, group_size)


def kimi_length_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    group_size: int,
) -> torch.Tensor:  # [B]
    """Kimi k1.5 group length reward: shorter than the group's midpoint earns, longer costs.

    Per group, lambda_i = 0.5 - (len_i - min) / (max - min); correct: lambda_i, wrong:
    min(0, lambda_i) (a wrong answer is never rewarded for being short). All zero when every
    length in the group is equal. Rows are grouped as rows g*G .. g*G+G-1.

    Checked against: Kimi k1.5 (arXiv 2501.12599), "length penalty": min_len / max_len over
    the k responses sampled for one problem, as here (one prompt group). open-r1's
    ``len_reward`` (``src/open_r1/rewards.py``) takes them over the whole batch it is given,
    in characters; the project keeps the paper's per-problem tokens.
    """
    x, c = _group_rows(lengths, correct, group_size)  # [g, G] each
    lo = x.amin(dim=1, keepdim=True)  # [g, 1]
    hi = x.amax(dim=1, keepdim=True)  # [g, 1]
    span = hi - lo  # [g, 1]
    lam = 0.5 - (x - lo) / torch.where(span > 0, span, torch.ones_like(span))  # [g, G]
    lam = torch.where(span > 0, lam, torch.zeros_like(lam)).reshape(-1)  # [B]
    return torch.where(c.reshape(-1), lam, lam.clamp(max=0.0))


def linear_length_penalty(lengths: torch.Tensor, max_len: int) -> torch.Tensor:  # [B]
    """-len / max_len: 0 for an empty answer, -1 at the cap (a plain, correctness-blind term;
    scaled by ``length.penalty_weight`` by the caller)."""
    _positive_cap(max_len)
    return -_lengths(lengths) / max_len


def _stages(schedule: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """Validated (start_step, cap) pairs: steps non-decreasing, caps positive."""
    stages: list[tuple[int, int]] = []
    for i, stage in enumerate(schedule or ()):
        if len(stage) != 2:
            raise ValueError(f"length.schedule[{i}]={list(stage)}: expected [step, max_len]")
        start, cap = int(stage[0]), int(stage[1])
        if stages and start < stages[-1][0]:
            raise ValueError(f"length.schedule[{i}]: steps must be non-decreasing")
        if cap <= 0:
            raise ValueError(f"length.schedule[{i}]: cap {cap} must be positive")
        stages.append((start, cap))
    return stages


def cap_at_step(
    schedule: Sequence[Sequence[int]] | None, step: int, default: int, mode: str = "step"
) -> int:
    """The response cap in force at ``step``.

    ``schedule`` is a list of (start_step, cap) stages sorted by step. ``step`` mode (staged
    caps, DeepScaleR 8k -> 16k -> 24k / ThinkPrune): the cap of the last stage whose
    start_step <= step (a later stage with the same start wins). ``linear`` mode: the same
    stages, but the cap moves linearly from one stage to the next (:func:`linear_ramp_cap`).
    Before the first stage, or with no (or an empty) schedule: ``default``.
    """
    stages = _stages(schedule)
    if mode not in SCHEDULE_MODES:
        raise ValueError(f"length.schedule_mode={mode!r}: allowed {', '.join(SCHEDULE_MODES)}")
    cap = default
    for i, (start, value) in enumerate(stages):
        if start > step:
            break
        cap = value
        if mode == "linear" and i + 1 < len(stages) and stages[i + 1][0] > step:
            nxt_start, nxt_cap = stages[i + 1]
            cap = linear_ramp_cap(step, start, nxt_start, value, nxt_cap)
    return cap


def linear_ramp_cap(step: int, start_step: int, end_step: int, start_cap: int,
                    end_cap: int) -> int:
    """Cap moving linearly from ``start_cap`` at ``start_step`` to ``end_cap`` at
    ``end_step`` (rounded to the nearest token), constant outside that range."""
    if end_step < start_step:
        raise ValueError(f"length.schedule: ramp steps must be non-decreasing, got "
                         f"{start_step} -> {end_step}")
    if start_cap <= 0 or end_cap <= 0:
        raise ValueError(f"length.schedule: caps must be positive, got {start_cap} -> {end_cap}")
    if end_step == start_step:
        return end_cap if step >= end_step else start_cap
    frac = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return int(round(start_cap + frac * (end_cap - start_cap)))


# --- group-relative length rewards, stop penalty and adaptive caps ------------------------


def shorter_better_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    group_size: int,
    alpha: float = 1.0,
    beta: float = 0.001,
) -> torch.Tensor:  # [B]
    """ShorterBetter (Yi et al. 2025, arXiv 2504.21370), the whole reward:

        r_i = alpha * 1[correct_i] - beta * |len_i - SOL|

    SOL, the sample optimal length, is per group: the length of the group's shortest correct
    completion, or the group's mean length when none is correct. Every member, right or
    wrong, is pulled towards SOL (a wrong answer shorter than SOL loses too). The paper
    trains alpha = 1 and alpha = 2.

    Checked against: the authors' JingyangYi/ShorterBetter,
    ``verl/verl/workers/reward_manager/naive.py`` (``check_correctness_and_length`` finds
    SOL, the mean length when nothing is correct; ``sb_compute_score`` the reward, there with
    alpha = 2, beta = 0.001, lengths in tokens).
    """
    x, c = _group_rows(lengths, correct, group_size)  # [g, G] each
    shortest = torch.where(c, x, torch.full_like(x, math.inf)).amin(dim=1, keepdim=True)
    sol = torch.where(c.any(dim=1, keepdim=True), shortest, x.mean(dim=1, keepdim=True))
    return (alpha * c.float() - beta * (x - sol).abs()).reshape(-1)  # [B]


def arora_zanette_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    group_size: int,
    alpha: float = 0.1,
) -> torch.Tensor:  # [B]
    """Arora & Zanette 2025 ("Training language models to reason efficiently", arXiv
    2502.04463), the whole reward:

        r_i = 1[correct_i] * (1 - alpha * sigmoid((len_i - mean_c) / std_c))

    mean_c and std_c are the mean and (population) standard deviation of the lengths of the
    prompt's correct completions, so a correct answer shorter than its correct siblings earns
    more than 1 - alpha/2 and a longer one less; wrong answers get 0. Where std_c = 0 (one
    correct completion, or all of the same length) the normalised length is 0 and every
    correct completion gets 1 - alpha/2. alpha in [0, 1) sets the trade-off.

    Checked against: Zanette-Labs/efficient-reasoning ``reward_server/math_server.py``
    (``query``: the lengths of the question's correct responses, ``np.std`` (population),
    1e-7 added to the std where this takes z = 0 for a zero std). Its scripts train with
    RLOO advantages (``algorithm.adv_estimator=rloo``, see conf/length/arora_zanette.yaml).
    """
    x, c = _group_rows(lengths, correct, group_size)  # [g, G] each
    cf = c.float()
    n_c = cf.sum(dim=1, keepdim=True)  # [g, 1]
    mean_c = (x * cf).sum(dim=1, keepdim=True) / n_c.clamp(min=1)  # [g, 1]
    var_c = (((x - mean_c) * cf) ** 2).sum(dim=1, keepdim=True) / n_c.clamp(min=1)  # [g, 1]
    std_c = var_c.sqrt()
    z = torch.where(std_c > 0, (x - mean_c) / torch.where(std_c > 0, std_c, 1.0),
                    torch.zeros_like(x))  # [g, G]
    return (cf * (1.0 - alpha * torch.sigmoid(z))).reshape(-1)  # [B]


def l1_exact_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    budgets: torch.Tensor,  # [B] the length N each completion's prompt asked for
    alpha: float = 0.0003,
) -> torch.Tensor:  # [B]
    """L1 / LCPO-Exact (Aggarwal & Welleck 2025, arXiv 2503.04697), the whole reward:

        r_i = 1[correct_i] - alpha * |N_i - len_i|

    N_i is the budget stated in the prompt ("Think for N tokens."); answers are pulled
    towards it from both sides. The paper uses alpha = 0.0003 (budgets of thousands).

    Checked against: the paper's Eq. 1; cmu-l3/l1 ``math_reward.py``
    (``get_delta_score_linear``), whose ``scripts/train/run_l1_exact.sh`` sets alpha = 0.0003.
    """
    x = _lengths(lengths)  # [B]
    n = _lengths(budgets)  # [B]
    return correct.bool().float() - alpha * (n - x).abs()


def l1_max_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    budgets: torch.Tensor,  # [B]
    alpha: float = 0.0003,
    delta: float = 0.5,
) -> torch.Tensor:  # [B]
    """L1 / LCPO-Max (Aggarwal & Welleck 2025, arXiv 2503.04697), the whole reward:

        r_i = 1[correct_i] * clip(alpha * (N_i - len_i) + delta, 0, 1)

    N_i is the prompt's budget, used as a maximum: a correct answer at the budget earns
    delta, one at least (1 - delta) / alpha tokens under it earns the full 1 (so answers under
    budget are not pushed further down), one delta / alpha tokens over it earns 0; wrong
    answers get 0. The paper uses alpha = 0.0003, delta = 0.5.

    Checked against: the paper's Eq. 2, which this follows. The authors' code (cmu-l3/l1
    ``math_reward.py``, ``get_delta_score_linear_both``) computes (clip(alpha * (N - len),
    -1, 1) + 1) / 2, a slope of alpha/2, and multiplies by correctness only behind a flag.
    Its Max prompts end in "Think for maximum N tokens." (``scripts/data/deepscaler_dataset.py``).
    """
    x = _lengths(lengths)  # [B]
    n = _lengths(budgets)  # [B]
    return correct.bool().float() * (alpha * (n - x) + delta).clamp(0.0, 1.0)


def stop_properly_penalty(
    rewards: torch.Tensor,  # [B]
    truncated: torch.Tensor,  # [B] bool, stopped by the length cap
    coef: float | None = None,
    value: float | None = None,
) -> torch.Tensor:  # [B]
    """ProRL's stop-properly penalty (NeMo-RL ``stop_properly_penalty_coef``, OpenRLHF
    ``length_penalty.py``): a completion the cap stopped gets

        r_i * coef    (``coef``), or
        value         (``value``, a fixed reward whatever the answer)

    and every other completion keeps r_i. Exactly one of ``coef`` / ``value`` is given.

    Checked against: NeMo-RL ``nemo_rl/algorithms/reward_functions.py``
    (``apply_reward_shaping``, which asserts 0 <= coef <= 1, as ``length.stop_penalty_coef``
    is validated); OpenRLHF ``openrlhf/trainer/ppo_utils/length_penalty.py``
    (``apply_stop_properly_penalty``: a coef in [0, 1] scales, a negative one replaces the
    reward with itself, here ``value``). With coef < 1 a negative reward moves towards 0, so
    a truncated answer with an overlong penalty is better off than a finished one, in both.
    """
    if (coef is None) == (value is None):
        raise ValueError("length.stop_penalty_coef / length.stop_penalty_value: set exactly one")
    r = rewards if rewards.is_floating_point() else rewards.float()  # [B], dtype kept
    cut = truncated.bool()
    new = r * coef if value is None else torch.full_like(r, float(value))
    return torch.where(cut, new, r)


def adaptive_cap(
    clip_ratios: Sequence[float],  # clip ratio of each step run so far, step 0 first
    start_cap: int,
    rounds: Sequence[int],
    threshold: float,
    min_steps: int = 1,
) -> int:
    """ThinkPrune-style iterative caps (Hou et al. 2025, arXiv 2504.01296), adaptive: the cap
    for the next step, given the clip ratio of every step run so far.

    The run starts at ``start_cap`` (round 0); round k+1 (cap ``rounds[k]``) starts after a
    step whose clip ratio was below ``threshold`` once the current round has run at least
    ``min_steps`` steps, i.e. once the policy has adapted to the cap. After the last round
    the cap stays. Replaying the history makes the decision a pure function of the run's own
    metrics: a resumed run recomputes the same caps from metrics.jsonl.

    Checked against: UCSB-NLP-Chang/ThinkPrune, where each round is a new run at a smaller
    ``data.max_response_length`` started from a checkpoint picked by hand (e.g. the 3k round
    from the 4k run's step 180) and a truncated answer earns 0 because the reward finds no
    answer in it. The trigger on the clip ratio is this project's own, and
    conf/length/thinkprune.yaml gives truncated answers 0 whatever the reward.
    """
    if min_steps < 1:
        raise ValueError(f"length.round_min_steps={min_steps}: must be >= 1")
    caps = [int(start_cap), *(int(c) for c in rounds)]
    current, steps_in_round = 0, 0
    for clip in clip_ratios:
        steps_in_round += 1
        if current + 1 < len(caps) and steps_in_round >= min_steps and clip < threshold:
            current, steps_in_round = current + 1, 0
    return caps[current]
