"""Rollouts with transformers models in this process: the CPU default backend.

Batched sampling with KV cache and left padding: text batches through the decode loop of
rollout/decode.py (rows leave at EOS; the same draws as ``generate``), vision batches and
``rollout.drop_finished=false`` through ``generate`` itself. The sampling distribution is
built by our own logits processors (temperature, top-p) so that the recorded log-probs are
exactly those of the distribution each token was drawn from, and no model
``generation_config.json`` defaults (top_k, repetition penalty) change it behind the user's
back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from grpo_cli.data.vision import concat_vision
from grpo_cli.errors import RolloutOutOfMemory
from grpo_cli.rollout.base import Completion, RolloutRequest, RolloutResult, tail_seconds
from grpo_cli.rollout.decode import sample_dropping_finished

# Yields the module to sample from (under ZeRO-3: inside GatheredParameters).
ModelContext = Callable[[], AbstractContextManager[torch.nn.Module]]


class _SampledLogprobRecorder(LogitsProcessor):
    """Records log p(token) of each sampled token under the final (warped) distribution.

    Must run last. At call t the previous step's token is ``input_ids[:, -1]``, so only one
    [B, V] log-softmax is held at a time (no [T, B, V] score history).
    """

    def __init__(self) -> None:
        self.prev: torch.Tensor | None = None  # [B, V] log-probs of the last step
        self.steps: list[torch.Tensor] = []  # each [B]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs [B, T] once generation is done; ``last_tokens`` is [B]."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, last_tokens[:, None]).squeeze(1))
        return torch.stack(self.steps, dim=1)


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class HFRollout:
    """Implements :class:`~grpo_cli.rollout.base.RolloutBackend` with a transformers model."""

    def __init__(
        self,
        model_context: ModelContext,
        pad_token_id: int,
        eos_token_ids: list[int],
        micro_batch_size: int = 64,
        image_token_id: int | None = None,
        drop_finished: bool = False,
    ) -> None:
        self.model_context = model_context
        self.pad_token_id = pad_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.micro_batch_size = micro_batch_size
        self.image_token_id = image_token_id  # VL models: marks image pads for 3-D positions
        # text-only batches: rows leave the batch at their EOS (rollout/decode.py)
        self.drop_finished = drop_finished

    def generate(self, request: RolloutRequest) -> RolloutResult:
        if request.multi_modal is not None and self.image_token_id is None:
            raise ValueError("vision inputs need a vision-language model (image_token_id)")
        start = time.perf_counter()
        # Row r is sample r % n of prompt r // n, so groups are contiguous.
        rows = [p for p in range(len(request.prompt_ids)) for _ in range(request.n)]
        completions: list[Completion] = []
        tails: list[float] = []  # per call: seconds after 90% of its rows had ended
        with self.model_context() as model, torch.no_grad():
            device = next(model.parameters()).device
            for chunk_start, chunk in zip(
                range(0, len(rows), self.micro_batch_size),
                _batches(rows, self.micro_batch_size),
                strict=True,
            ):
                seqs = [request.prompt_ids[p] for p in chunk]
                vision = None if request.multi_modal is None else \
                    concat_vision([request.multi_modal[p] for p in chunk])
                progress: list[tuple[float, int]] = []
                call_start = time.perf_counter()
                try:
                    tokens, logprobs = self._sample(model, seqs, request, device, vision,
                                                    progress)
                except torch.OutOfMemoryError as e:
                    raise RolloutOutOfMemory.advise(len(seqs), request.max_new_tokens,
                                                    request.n, self.micro_batch_size) from e
                if progress:  # only the decode loop reports per-step progress
                    tails.append(tail_seconds(call_start, progress, len(seqs)))
                for i, prompt_index in enumerate(chunk):
                    completions.append(
                        self._completion(prompt_index, (chunk_start + i) % request.n,
                                         tokens[i], logprobs[i], request.max_new_tokens)
                    )
        timings = {"rollout_s": time.perf_counter() - start}
        if tails:
            timings["tail_s"] = sum(tails)
        return RolloutResult(completions, timings)

    def _sample(
        self,
        model: torch.nn.Module,
        seqs: list[list[int]],
        request: RolloutRequest,
        device: torch.device,
        vision: dict[str, torch.Tensor] | None = None,
        progress: list[tuple[float, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding
            input_ids[i, width - len(s):] = torch.tensor(s)
            attention[i, width - len(s):] = 1
        warpers: list[LogitsProcessor] = []
        if request.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(request.temperature))
        if request.top_p < 1.0:
            warpers.append(TopPLogitsWarper(request.top_p))
        if self.drop_finished and vision is None:
            return sample_dropping_finished(
                model, input_ids.to(device), attention.to(device), warpers,
                request.max_new_tokens, self.eos_token_ids, self.pad_token_id, progress)
        recorder = _SampledLogprobRecorder()
        processors = LogitsProcessorList([*warpers, recorder])
        gen_config = GenerationConfig(
            do_sample=True,
            temperature=1.0,  # applied by our processors above
            top_p=1.0,
            top_k=0,
            max_new_tokens=request.max_new_tokens,
            min_new_tokens=0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )
        extra: dict[str, torch.Tensor] = {}
        if vision is not None:  # pixel_values [patches, D], image_grid_thw [images, 3]
            extra = {k: v.to(device) for k, v in vision.items()}
            extra["mm_token_type_ids"] = (input_ids == self.image_token_id).int().to(device)
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            generation_config=gen_config,
            logits_processor=processors,
            synced_gpus=False,  # the model is local to this rank (see engine.gathered)
            **extra,
        )
        generated = out[:, width:].cpu()  # [B, T_gen], padded after EOS
        logprobs = recorder.finish(generated[:, -1].to(device)).cpu()  # [B, T_gen]
        return generated, logprobs

    def _completion(
        self,
        prompt_index: int,
        sample: int,
        tokens: torch.Tensor,
        logprobs: torch.Tensor,
        max_new_tokens: int,
    ) -> Completion:
        """Cut at the first EOS (kept); no EOS means the engine stopped at the token cap."""
        ids = tokens.tolist()
        eos_pos = next((i for i, t in enumerate(ids) if t in self.eos_token_ids), None)
        if eos_pos is None:
            # generate only stops without EOS when max_new_tokens is reached.
            assert len(ids) == max_new_tokens, (len(ids), max_new_tokens)
            return Completion(prompt_index, sample, ids, logprobs.tolist(), "length")
        end = eos_pos + 1
        return Completion(prompt_index, sample, ids[:end], logprobs[:end].tolist(), "stop")
