"""Rollouts with a colocated vLLM engine (``rollout.backend=vllm``, extra ``grpo-cli[vllm]``).

One engine lives in each training process and shares its GPU (``rollout.gpu_memory_utilization``
of it for weights and KV cache). Between rollouts it sleeps (``rollout.sleep_level``) so that
training gets the memory back. Before sampling, the policy's new weights are pushed into it,
one parameter at a time (gathered from ZeRO-3 shards only while copied). With
``rollout.tensor_parallel_size > 1`` the engine is sharded over that many consecutive ranks
(vLLM's ``external_launcher`` executor); those ranks pool their prompts, sample them together
and each keeps its own.

The returned completions follow :mod:`grpo_cli.rollout.base`: vLLM's token ids (EOS kept),
the log-prob of each sampled token under the processed distribution (temperature and top-p
applied: ``logprobs_mode="processed_logprobs"``), and ``finish_reason == "length"`` as the
truncation flag. Nothing here imports vLLM at module level: the conversion functions are
plain Python, tested on CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from grpo_cli.rollout.base import Completion, RolloutOutOfMemory, RolloutRequest, RolloutResult

Weights = Callable[[], Iterable[tuple[str, torch.Tensor]]]


def collapse_image_pads(ids: Sequence[int], image_token_id: int) -> list[int]:
    """Token ids with each run of image pads cut to one pad per image.

    Training prompts hold the processor's expanded ids (one ``<|image_pad|>`` per merged patch);
    vLLM expands the pads itself from ``multi_modal_data``, as for EasyR1's ``raw_prompt_ids``.
    """
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(token)
    return out


def sampling_kwargs(request: RolloutRequest, eos_token_ids: Sequence[int],
                    seed: int | None) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments equivalent to the ``hf`` backend's sampling."""
    return {
        "n": request.n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": 0,  # off, as in the hf backend: no generation_config defaults
        "max_tokens": request.max_new_tokens,
        "min_tokens": 0,
        "logprobs": 0,  # the sampled token's own log-prob only
        "seed": seed,
        "stop_token_ids": list(eos_token_ids),  # every EOS id, not only the tokenizer's one
        "detokenize": False,  # the loop decodes; vLLM's text is not needed
        "skip_special_tokens": False,
    }


def vllm_prompts(request: RolloutRequest, image_token_id: int | None,
                 mm_processor_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``TokensPrompt`` dicts; images (already resized as for training) as multi-modal data."""
    prompts: list[dict[str, Any]] = []
    for i, ids in enumerate(request.prompt_ids):
        images = request.images[i] if request.images is not None else []
        if not images:
            prompts.append({"prompt_token_ids": list(ids)})
            continue
        if image_token_id is None:
            raise ValueError("image prompts need a vision-language model (image_token_id)")
        prompt: dict[str, Any] = {"prompt_token_ids": collapse_image_pads(ids, image_token_id),
                                  "multi_modal_data": {"image": list(images)}}
        if mm_processor_kwargs:
            prompt["mm_processor_kwargs"] = dict(mm_processor_kwargs)
        prompts.append(prompt)
    return prompts


def completions_from_outputs(outputs: Sequence[Any], n: int) -> list[Completion]:
    """vLLM ``RequestOutput`` list (one per prompt, in prompt order) -> completions grouped by
    prompt. Sample order follows ``CompletionOutput.index``."""
    completions: list[Completion] = []
    for prompt_index, out in enumerate(outputs):
        if len(out.outputs) != n:
            raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for prompt "
                               f"{prompt_index}, expected rollout.n={n}")
        for c in sorted(out.outputs, key=lambda c: c.index):
            if c.finish_reason not in ("stop", "length"):  # abort, error, repetition
                raise RuntimeError(f"vLLM finished a completion with reason "
                                   f"{c.finish_reason!r}; only 'stop' and 'length' are expected")
            token_ids = list(c.token_ids)
            if c.logprobs is None or len(c.logprobs) != len(token_ids):
                raise RuntimeError("vLLM returned no log-prob for some sampled tokens "
                                   "(SamplingParams.logprobs must be 0)")
            logprobs = [float(position[token].logprob)
                        for position, token in zip(c.logprobs, token_ids, strict=True)]
            completions.append(Completion(prompt_index, c.index, token_ids, logprobs,
                                          c.finish_reason))
    return completions


def prompt_seed(seed: int | None, prompt_index: int) -> int | None:
    """A 32-bit seed for one prompt's samples, derived from the request's seed."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, prompt_index]).generate_state(1)[0])


def tp_groups(world: int, tp: int) -> list[list[int]]:
    """Consecutive ranks sharing one tensor-parallel engine: [[0..tp-1], [tp..2tp-1], ...]."""
    if tp < 1 or world % tp:
        raise ValueError(f"rollout.tensor_parallel_size={tp} must divide the {world} ranks")
    return [list(range(g * tp, (g + 1) * tp)) for g in range(world // tp)]


def make_tp_group(world: int, rank: int, tp: int) -> Any:
    """This rank's process group of engine peers (None without tensor parallelism). Every
    rank creates every group, in the same order, as torch.distributed requires."""
    groups = tp_groups(world, tp)
    if tp == 1:
        return None
    import torch.distributed as dist

    handles = [dist.new_group(ranks) for ranks in groups]
    return next(h for h, ranks in zip(handles, groups, strict=True) if rank in ranks)


class VLLMRollout:
    """Implements :class:`~grpo_cli.rollout.base.RolloutBackend` with a colocated vLLM engine."""

    def __init__(
        self,
        llm: Any,
        eos_token_ids: Sequence[int],
        weights: Weights,
        weights_version: Callable[[], int],
        image_token_id: int | None = None,
        sleep_level: int = 0,
        tp_group: Any = None,
        tp_size: int = 1,
        mm_processor_kwargs: dict[str, Any] | None = None,
        gpu_memory_utilization: float = 0.0,
    ) -> None:
        self.llm = llm
        self.eos_token_ids = list(eos_token_ids)
        self.weights = weights
        self.weights_version = weights_version
        self.image_token_id = image_token_id
        self.sleep_level = sleep_level
        self.tp_group, self.tp_size = tp_group, tp_size
        self.mm_processor_kwargs = mm_processor_kwargs
        self.gpu_memory_utilization = gpu_memory_utilization  # for the out-of-memory advice
        self.loaded_version: int | None = 0  # the engine starts from the checkpoint's weights
        if sleep_level:
            self.llm.sleep(level=sleep_level)

    @classmethod
    def create(cls, model_path: str, dtype: str, max_model_len: int, seed: int, *,
               gpu_memory_utilization: float, tensor_parallel_size: int, sleep_level: int,
               world: int, rank: int, **kwargs: Any) -> VLLMRollout:
        """Start the engine inside this training process (needs a GPU and the vllm extra)."""
        from vllm import LLM

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process worker
        tp_group = make_tp_group(world, rank, tensor_parallel_size)
        llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            distributed_executor_backend="external_launcher",
            seed=seed + rank // tensor_parallel_size,  # one seed per engine
            enable_sleep_mode=sleep_level > 0,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
        )
        return cls(llm, sleep_level=sleep_level, tp_group=tp_group,
                   tp_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                   **kwargs)

    # --- weights --------------------------------------------------------------------------
    def _sync_weights(self) -> None:
        """Push the policy's weights if an optimiser step changed them since the last push."""
        version = self.weights_version()
        if version == self.loaded_version:
            return
        weights = self.weights()  # under ZeRO-3 a collective: every rank runs this in step
        self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()  # cached KV came from the old weights
        self.loaded_version = version

    # --- sampling -------------------------------------------------------------------------
    def generate(self, request: RolloutRequest) -> RolloutResult:
        from vllm import SamplingParams

        start = time.perf_counter()
        if self.sleep_level:
            self.llm.wake_up(tags=["weights"])
        self._sync_weights()
        if self.sleep_level:
            self.llm.wake_up(tags=["kv_cache"])
        # One SamplingParams per prompt, seeded from (request seed, prompt): reproducible, and
        # unrelated across prompts and ranks (vLLM gives sample j of a prompt seed + j).
        prompts = vllm_prompts(request, self.image_token_id, self.mm_processor_kwargs)
        local = [(p, sampling_kwargs(request, self.eos_token_ids, prompt_seed(request.seed, i)))
                 for i, p in enumerate(prompts)]
        pooled, mine = self._pool(local)
        prompts = [prompt for prompt, _ in pooled]
        params = [SamplingParams(**kwargs) for _, kwargs in pooled]
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except torch.OutOfMemoryError as e:
            raise RolloutOutOfMemory.advise_vllm(len(prompts) * request.n,
                                                 request.max_new_tokens, request.n,
                                                 self.gpu_memory_utilization) from e
        completions = completions_from_outputs(outputs[mine], request.n)
        if self.sleep_level:
            self.llm.sleep(level=self.sleep_level)
        return RolloutResult(completions, {"rollout_s": time.perf_counter() - start})

    def _pool(self, local: list[Any]) -> tuple[list[Any], slice]:
        """Tensor parallel: every rank of the engine submits the group's requests together
        (same prompts, same seeds); each keeps the outputs of its own."""
        if self.tp_group is None:
            return local, slice(0, len(local))
        import torch.distributed as dist

        parts: list[Any] = [None] * self.tp_size
        dist.all_gather_object(parts, local, group=self.tp_group)
        me = dist.get_rank(group=self.tp_group)
        offset = sum(len(p) for p in parts[:me])
        return [p for part in parts for p in part], slice(offset, offset + len(local))
