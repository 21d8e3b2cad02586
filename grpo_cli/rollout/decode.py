"""Sampling that stops computing a sequence once it has ended.

transformers ``generate`` keeps every row of the batch in every decode step until the
longest one ends: a row that stopped at token 5 of a 128-token cap is computed (as padding)
123 more times. Here a row leaves the batch, and its KV cache, at its EOS; each step runs
only the rows still going. Same draws as ``generate`` with the same warpers: every step makes
one multinomial draw over all B rows of the call, as ``generate`` does for its finished rows
too (torch draws B x V exponentials whatever the values), so the random stream reaches each
row still going exactly as it would in ``generate`` and a seed gives the same tokens. The
recorded log-probs are those of the distribution each token was drawn from.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

import torch
from transformers import DynamicCache, LogitsProcessor


def sample_dropping_finished(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, P] left-padded prompts
    attention: torch.Tensor,  # [B, P] 1 on prompt tokens
    warpers: Sequence[LogitsProcessor],  # temperature, top-p: applied in order
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    progress: list[tuple[float, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled tokens [B, T] (pad after a row's EOS) and their log-probs [B, T] (0 there),
    T <= max_new_tokens; a row without EOS ran to the cap. ``progress``, when given, gets
    (time.perf_counter(), rows ended so far) after every decode step: how long the call ran
    for its last rows (see :func:`grpo_cli.rollout.base.tail_seconds`)."""
    batch, device = input_ids.shape[0], input_ids.device
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32)
    eos = torch.tensor(list(eos_token_ids), device=device)
    rows = torch.arange(batch)  # which original row each batch row is
    cache = DynamicCache()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # [B, P]
    step_ids, step_pos = input_ids, positions
    used = 0
    cache_arg = cache_keyword(model)
    for t in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=attention, position_ids=step_pos,
                    use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        scores = out.logits[:, -1, :].float()  # [b, V]
        for warp in warpers:
            scores = warp(step_ids, scores)
        logp = torch.log_softmax(scores, dim=-1)  # [b, V]
        # generate draws from softmax(scores); logp.exp() can differ from it in the last bit
        nxt = draw(torch.softmax(scores, dim=-1), rows.to(device), batch)  # [b]
        tokens[rows, t] = nxt.cpu()
        logprobs[rows, t] = logp.gather(1, nxt[:, None]).squeeze(1).cpu()
        used = t + 1
        going = ~torch.isin(nxt, eos)  # [b]
        if progress is not None:
            progress.append((time.perf_counter(), batch - int(going.sum())))
        if not bool(going.any()):
            break
        if not bool(going.all()):  # drop the rows that ended, and their cache
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, nxt, attention = rows[keep.cpu()], nxt[keep], attention[keep]
            step_pos = step_pos[keep]
        step_ids = nxt[:, None]
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        step_pos = step_pos[:, -1:] + 1
    return tokens[:, :used], logprobs[:, :used]


def draw(probs: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """One token per row still going ([b, V] probabilities of the call's rows ``rows``),
    drawn from a multinomial over all ``batch`` rows as ``generate`` draws (the ended rows get
    a uniform placeholder: their draws are thrown away, but they use the same random
    numbers)."""
    if probs.shape[0] == batch:
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    full = probs.new_ones((batch, probs.shape[1]))  # [B, V]
    full[rows] = probs
    return torch.multinomial(full, num_samples=1).squeeze(1)[rows]  # [b]


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward argument for the KV cache: ``cache`` from transformers 5.24 (where
    ``past_key_values`` is deprecated), ``past_key_values`` before (vLLM's venv pins 5.19)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else \
        "past_key_values"
