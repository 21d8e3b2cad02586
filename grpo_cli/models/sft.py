"""Supervised fine-tuning pieces shared by the toy's build and the real models' warm start:
examples with the loss on the answer only, length-bucketed batches, the LR schedule, a step.

Why not TRL's SFTTrainer: both users of this module run a few hundred steps inside a cached,
deterministic build (the toy's must reproduce bit for bit); a 20-line loop over plain
``transformers`` models keeps that exact and adds no dependency.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

# (prompt + answer + EOS token ids, prompt length): the loss covers ids[prompt length:].
Example = tuple[list[int], int]


def pad_batch(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and labels [B, L] (-100 outside answers, so pads and prompts
    carry no loss).

    Right padding needs no attention mask under a causal mask: pads only follow real tokens.
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return input_ids, labels


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up for 5% of the steps, then cosine decay to 10% of the peak."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def length_batches(examples: list[Example], batch_size: int,
                   shuffle_key: str) -> list[list[Example]]:
    """Length-bucketed batches in a seeded random order: ~2.5x less padding than random.

    Examples are sorted by length within windows of 32 batches, so every batch still mixes
    problems and styles of similar length, and the order is a pure function of
    ``shuffle_key`` (a string: it hashes identically in every process).
    """
    window = 32 * batch_size
    batches = []
    for start in range(0, len(examples), window):
        chunk = sorted(examples[start : start + window], key=lambda e: len(e[0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    random.Random(shuffle_key).shuffle(batches)
    return batches


def train_step(model: Any, optim: torch.optim.Optimizer, input_ids: torch.Tensor,
               labels: torch.Tensor) -> float:
    """One AdamW step on the mean answer-token cross-entropy, gradient norm clipped at 1."""
    loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optim.step()
    return loss.item()
