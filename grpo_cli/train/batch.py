"""One rank's completions as training tensors, and the forward pass that scores them.

Rows are prompt + completion pairs: prompts left-padded to a common width P, completions
right-padded to T, so column ``P - 1 + t`` of the logits predicts completion token ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grpo_cli.algo.losses import gather_token_logprobs, token_entropy
from grpo_cli.data.vision import concat_vision
from grpo_cli.rollout.base import Completion


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
