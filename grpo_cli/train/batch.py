"""One rank's completions as training tensors, and the forward pass that scores them.

Rows are prompt + completion pairs: prompts left-padded to a common width P, completions
right-padded to T, so column ``P - 1 + t`` of the logits predicts completion token ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grpo_cli.algo.losses import chunked_logprobs
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

    def to(self, device: torch.device) -> Batch:
        """The same rows on ``device``. The whole batch stays on the host (its row
        selection is host work) and each micro-batch moves before its forward pass."""
        vision = None if self.vision is None else \
            [{k: v.to(device) for k, v in part.items()} for part in self.vision]
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.position_ids.to(device), self.completion_ids.to(device),
                     self.loss_mask.to(device), self.advantages.to(device),
                     self.sampling_logprobs.to(device), self.prompt_width, vision,
                     self.image_token_id)


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


def micro_batches(b: Batch, rows: slice, size: int, by_length: bool) -> list[torch.Tensor]:
    """Row indices of each micro-batch of ``rows``, ``size`` rows each: consecutive rows, or
    (``by_length``) rows sorted longest first, so a micro-batch cut to its own widths
    (:func:`take`) holds little padding. The loss weights are global, so the order of the rows
    changes only the order of float sums."""
    idx = torch.arange(rows.start, rows.stop)  # [n]
    if by_length:
        real = b.attention_mask[rows].sum(dim=1)  # [n] prompt + completion tokens
        idx = idx[torch.argsort(real, descending=True, stable=True)]
    return list(idx.split(size))


def take(b: Batch, idx: torch.Tensor, trim: bool) -> Batch:
    """Rows ``idx`` of the batch; with ``trim``, cut to the widest prompt and the longest
    completion among them (only padding columns go: positions and masks are unchanged)."""
    p, t = b.prompt_width, b.completion_ids.shape[1]
    if trim:
        attention = b.attention_mask[idx]  # [n, P + T]
        p = int(attention[:, : b.prompt_width].sum(dim=1).max())
        t = int(attention[:, b.prompt_width :].sum(dim=1).max())
    cols = slice(b.prompt_width - p, b.prompt_width + t)
    return Batch(
        b.input_ids[idx, cols], b.attention_mask[idx, cols], b.position_ids[idx, cols],
        b.completion_ids[idx, :t], b.loss_mask[idx, :t], b.advantages[idx],
        b.sampling_logprobs[idx, :t], p,
        [b.vision[i] for i in idx.tolist()] if b.vision is not None else None,
        b.image_token_id)


def forward_logprobs(
    model: Any, b: Batch, temperature: float, with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [n, T] of the completion tokens (and their entropies) for every row.

    Only the last T + 1 positions go through the LM head (``logits_to_keep``: the prompt's
    logits are never used), and the fp32 work on the logits runs in blocks
    (:func:`~grpo_cli.algo.losses.chunked_logprobs`): at a real vocabulary the logits are
    the largest tensors of the step.
    """
    extra: dict[str, Any] = {"position_ids": b.position_ids}
    if b.vision is not None:
        extra = vision_kwargs(b.vision, b.input_ids, b.image_token_id)
    width = b.completion_ids.shape[1]  # T
    logits = model(
        input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False,
        logits_to_keep=width + 1, **extra,
    ).logits  # [n, T + 1, V]: position t predicts token t, the last one nothing
    return chunked_logprobs(logits, b.completion_ids, temperature, with_entropy=with_entropy)


def vision_kwargs(parts: list[dict[str, torch.Tensor]], input_ids: torch.Tensor,
                  image_token_id: int | None) -> dict[str, Any]:
    """Model inputs for the images of these rows; ``mm_token_type_ids`` (1 on image pads)
    lets the model build Qwen2.5-VL's 3-D positions from the token ids."""
    out: dict[str, Any] = dict(concat_vision(parts))
    if image_token_id is not None:
        out["mm_token_type_ids"] = (input_ids == image_token_id).int()
    return out


@torch.no_grad()
def logprobs_no_grad(model: Any, b: Batch, micro: int, temperature: float,
                     by_length: bool, device: torch.device) -> torch.Tensor:
    """Log-probs [N, T] on ``device`` of every row's completion tokens (0 past its end),
    ``micro`` rows per forward pass (micro-batched as the update is: see
    :func:`micro_batches`)."""
    out: torch.Tensor | None = None  # [N, T]
    for idx in micro_batches(b, slice(0, len(b.advantages)), micro, by_length):
        m = take(b, idx, trim=by_length).to(device)
        logp = forward_logprobs(model, m, temperature, with_entropy=False)[0]  # [n, t]
        if out is None:
            out = logp.new_zeros(b.completion_ids.shape)
        out[idx.to(logp.device), : logp.shape[1]] = logp
    assert out is not None
    return out
