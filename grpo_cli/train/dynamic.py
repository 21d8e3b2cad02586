"""A step's batch under DAPO's dynamic sampling: rounds of prompts until it holds
``trainer.prompts_per_step`` groups that carry signal (see :mod:`grpo_cli.algo.dynamic`).

Each round draws ``prompts_per_step`` new prompts from the run's prompt sampler (veRL's
default generation batch) and every rank samples its share. Groups never cross ranks, so
each rank must fill its own share of the batch: the rounds go on until every rank holds
its share of informative groups (agreed by a gather each round) or
``algorithm.dynamic_sampling_max_rounds`` are done. A rank still short then fills its batch
with dropped groups that carry no loss, so every rank runs the same micro-batches and the
gradient is that of the informative groups alone.

Everything sampled stays in the step's rollout rows (the telemetry describes all the
policy produced); the columns ``round``, ``informative`` and ``trained`` say what the update
used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from grpo_cli.algo.dynamic import fill_groups, informative_groups
from grpo_cli.config.schema import AlgorithmConfig
from grpo_cli.errors import RewardContractError
from grpo_cli.train import engine as eng
from grpo_cli.train.sample import Rollouts, Scored


@dataclass
class BatchRows:
    """Which of a step's sampled rows (this rank) form the update batch."""

    rows: np.ndarray  # [M] indices into the rank's sampled rows, whole groups, in order
    loss: np.ndarray  # [M] bool; False: a filler row of a dropped group, no loss

    @classmethod
    def every(cls, n: int) -> BatchRows:
        return cls(np.arange(n), np.ones(n, dtype=bool))


def filter_values(s: Scored, key: str) -> np.ndarray:
    """The per-row values the filter reads [N]: the final reward or a named component."""
    if key == "reward":
        return s.rewards
    if key not in s.components:
        raise RewardContractError(
            f"algorithm.dynamic_sampling_key={key}: the reward has no such component; use "
            f"reward or one of {', '.join(sorted(s.components))}")
    return s.components[key]


def draw_informative(draw: Callable[[int], tuple[Rollouts, Scored]], groups: int, n: int,
                     a: AlgorithmConfig, d: eng.Dist) -> tuple[Rollouts, Scored, BatchRows]:
    """Rounds of ``draw(round)`` (this rank's share of a round's prompts, sampled and
    scored) until every rank holds ``groups`` informative groups; returns all that was
    sampled, with the ``round``/``informative``/``trained`` columns, and the batch rows."""
    parts: list[tuple[Rollouts, Scored]] = []
    flags: list[np.ndarray] = []  # per round [groups of the round] bool
    for k in range(a.dynamic_sampling_max_rounds):
        r, s = draw(k)
        parts.append((r, s))
        flags.append(informative_groups(filter_values(s, a.dynamic_sampling_key), n,
                                        a.dynamic_sampling_low, a.dynamic_sampling_high))
        have = int(sum(f.sum() for f in flags))
        if min(eng.all_gather_objects(have, d.world)) >= groups:
            break
    r, s = concat_rollouts([p[0] for p in parts]), concat_scored([p[1] for p in parts])
    informative = np.concatenate(flags)  # [all groups]
    chosen, carries = fill_groups(informative, groups)
    rows = (chosen[:, None] * n + np.arange(n)).reshape(-1)  # [groups * n]
    loss = np.repeat(carries, n)
    trained = np.zeros(len(r.lengths), dtype=bool)
    trained[rows[loss]] = True
    s.columns.update({
        "round": np.concatenate([np.full(len(p[0].lengths), k, dtype=np.int16)
                                 for k, p in enumerate(parts)]),
        "informative": np.repeat(informative, n),
        "trained": trained,
    })
    return r, s, BatchRows(rows, loss)


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    """The rounds' rollouts one after the other (groups stay whole)."""
    vision = None if parts[0].vision is None else [v for p in parts for v in p.vision or []]
    timings = {k: sum(p.timings[k] for p in parts) for k in parts[0].timings
               if all(k in p.timings for p in parts)}  # seconds add up over the rounds
    return Rollouts([i for p in parts for i in p.prompt_ids],
                    [c for p in parts for c in p.completions],
                    [t for p in parts for t in p.texts],
                    np.concatenate([p.lengths for p in parts]),
                    np.concatenate([p.truncated for p in parts]), vision, timings)


def concat_scored(parts: list[Scored]) -> Scored:
    """The rounds' scores one after the other; a component some round lacks is NaN there."""
    def column(name: str, field: str) -> np.ndarray:
        return np.concatenate([getattr(p, field).get(name, np.full(len(p.rewards), np.nan))
                               for p in parts])

    components = {k for p in parts for k in p.components}
    columns = {k for p in parts for k in p.columns}
    return Scored(np.concatenate([p.rewards for p in parts]),
                  np.concatenate([p.correct for p in parts]),
                  {k: column(k, "components") for k in sorted(components)},
                  {k: column(k, "columns") for k in sorted(columns)})
