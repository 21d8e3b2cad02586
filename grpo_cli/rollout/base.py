"""The rollout interface shared by every sampling backend (transformers `generate`, vLLM).

A backend turns tokenised prompts into sampled completions. It reports, per completion,
exactly the generated token ids (EOS included when the model emitted it, never padding),
the log-probability of each sampled token under the sampling distribution, and why the
engine stopped: ``"stop"`` (an EOS / stop token) or ``"length"`` (the token cap).
Truncation metrics are derived from that finish reason only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """One sampled completion for one prompt."""

    prompt_index: int  # index into the prompts passed to `generate`
    sample: int  # 0..n-1 within the prompt's group
    token_ids: list[int]  # generated tokens, EOS included if emitted, no padding
    logprobs: list[float]  # sampling log-prob of each token in token_ids
    finish_reason: FinishReason

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class RolloutRequest:
    """What to sample: prompts as token ids (no padding) plus optional vision inputs."""

    prompt_ids: list[list[int]]
    n: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    # Per-prompt processor outputs for vision-language models (pixel_values, image_grid_thw):
    # what the hf backend feeds `generate`.
    multi_modal: list[dict[str, Any]] | None = None
    # Per-prompt images (PIL, resized exactly as for `multi_modal`): what vLLM takes instead.
    images: list[list[Any]] | None = None


@dataclass
class RolloutResult:
    completions: list[Completion]  # grouped: prompt 0's n samples, then prompt 1's, ...
    timings: dict[str, float] = field(default_factory=dict)


class RolloutBackend(Protocol):
    """Anything that samples completions. Implemented by `hf.HFRollout` and `vllm.VLLMRollout`."""

    def generate(self, request: RolloutRequest) -> RolloutResult: ...


def tail_seconds(start: float, progress: list[tuple[float, int]], rows: int,
                 share: float = 0.9) -> float:
    """Seconds a sampling call ran after ``share`` of its ``rows`` had ended: the time spent
    on the long tail (the cost of a generous cap). ``progress`` is the backend's record of
    (time, rows ended so far): the hf decode loop's after every step, vLLM's as requests
    finish; a call that never got there (the cap cut the rest) counts from its last entry,
    i.e. 0."""
    if not progress:
        return 0.0
    end = progress[-1][0]
    reached = next((t for t, done in progress if done >= share * rows), end)
    return max(end - max(reached, start), 0.0)
