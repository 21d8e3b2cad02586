"""KL penalty to the frozen reference policy."""

from __future__ import annotations

import torch


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's low-variance k3 estimator, elementwise: exp(d) - d - 1, d = ref - logp.

    Non-negative and zero when the policies agree. The log-ratio is clamped to [-20, 20] so a
    token the reference finds impossible cannot overflow exp (as veRL's low_var_kl does).
    """
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return torch.exp(d) - d - 1.0
