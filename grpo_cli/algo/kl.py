"""KL penalty to the frozen reference policy."""

from __future__ import annotations

import torch

# The same log-ratio clamp as the policy ratio: exp(20) ~ 4.9e8, never binding in a healthy run.
from grpo_cli.algo.losses import LOG_RATIO_CLAMP


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's low-variance k3 estimator of KL(pi || ref), elementwise: exp(d) - d - 1.

    d = ref_logprobs - logprobs. Unbiased for KL(pi || ref) on tokens sampled from pi, always
    >= 0, and exactly 0 where the two agree (what GRPO, TRL and veRL's ``low_var_kl`` use).
    The log-ratio d is clamped to [-20, 20] so a token the reference finds (almost)
    impossible cannot overflow exp; the result stays >= 0 because exp(d) - d - 1 >= 0 for
    every d. Any shape; the two inputs broadcast.
    """
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0
