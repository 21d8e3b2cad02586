"""The vLLM backend's CPU-testable parts: request outputs -> completions, prompts (image pads,
multi-modal data), sampling parameters, seeds, tensor-parallel groups, and the order of
wake / weight push / sample / sleep.

vLLM cannot be imported on this machine (no GPU platform). Where vLLM is importable its own
output classes are used; otherwise `StandInCompletionOutput` / `StandInRequestOutput` /
`StandInLogprob` stand in: they carry exactly the fields of vllm 0.32's `CompletionOutput`,
`RequestOutput` and `Logprob` that the backend reads (same names, same types). The engine
(`LLM`) is a recording stand-in: a boundary that needs a GPU. GPU tests in tests/gpu run the
real engine.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from grpo_cli.rollout.base import RolloutRequest
from grpo_cli.rollout.vllm import (
    VLLMRollout,
    collapse_image_pads,
    completions_from_outputs,
    prompt_seed,
    sampling_kwargs,
    tp_groups,
    vllm_prompts,
)


@dataclass
class StandInLogprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class StandInCompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Any]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class StandInRequestOutput:  # vllm.outputs.RequestOutput (fields the backend reads)
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[Any] = field(default_factory=list)
    finished: bool = True


try:  # the real classes where vLLM imports (GPU machines with the extra)
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput
except Exception:  # noqa: BLE001 - no vllm, or no platform for it
    Logprob, CompletionOutput, RequestOutput = (StandInLogprob, StandInCompletionOutput,
                                                StandInRequestOutput)

EOS = 2


def completion(index: int, tokens: list[int], lps: list[float], reason: str) -> Any:
    # logprobs=1 style: the sampled token plus a higher-ranked one; the sampled one is read
    positions = [{t: Logprob(lp, rank=2), 99: Logprob(-0.01, rank=1)}
                 for t, lp in zip(tokens, lps, strict=True)]
    return CompletionOutput(index=index, text="", token_ids=tokens,
                            cumulative_logprob=sum(lps), logprobs=positions,
                            finish_reason=reason)


def request_output(i: int, outs: list[Any]) -> Any:
    return RequestOutput(request_id=str(i), prompt=None, prompt_token_ids=[1, 5],
                         prompt_logprobs=None, outputs=outs, finished=True)


def test_outputs_become_completions_grouped_in_sample_order() -> None:
    outputs = [
        request_output(0, [completion(1, [7, 8, 9], [-0.5, -0.25, -2.0], "length"),
                           completion(0, [4, EOS], [-1.0, -0.1], "stop")]),
        request_output(1, [completion(0, [EOS], [-0.3], "stop"),
                           completion(1, [5, 6, 7], [-0.7, -0.8, -0.9], "length")]),
    ]
    comps = completions_from_outputs(outputs, n=2)
    assert [(c.prompt_index, c.sample) for c in comps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert comps[0].token_ids == [4, EOS] and not comps[0].truncated  # EOS kept, as in hf
    assert comps[1].truncated and comps[1].logprobs == [-0.5, -0.25, -2.0]
    assert comps[2].token_ids == [EOS] and comps[2].logprobs == [-0.3]
    assert [len(c.token_ids) for c in comps] == [len(c.logprobs) for c in comps]


@pytest.mark.parametrize(("outs", "message"), [
    ([completion(0, [3], [-1.0], "abort")], "reason 'abort'"),
    ([completion(0, [3], [-1.0], "stop"), completion(1, [3], [-1.0], "stop")],
     "expected rollout.n=1"),
])
def test_unexpected_outputs_are_errors_not_numbers(outs: list[Any], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        completions_from_outputs([request_output(0, outs)], n=1)


def test_missing_logprobs_are_an_error() -> None:
    out = completion(0, [3, 4], [-1.0, -1.0], "stop")
    out.logprobs = None
    with pytest.raises(RuntimeError, match="no log-prob"):
        completions_from_outputs([request_output(0, [out])], n=1)


def test_image_pads_collapse_to_what_the_tokenizer_gives_the_template() -> None:
    """Training prompts hold the processor's expanded pads; vLLM gets one pad per image, as
    the tokenizer alone encodes the chat-templated text (EasyR1's raw_prompt_ids)."""
    from grpo_cli.data.toy import generate_rows
    from grpo_cli.data.vision import decode_image, encode_prompt, vision_messages
    from grpo_cli.models.load import load_processor, vision_token_id
    from grpo_cli.models.toy_vl import ensure_toy_vl_model

    model_dir = ensure_toy_vl_model()
    processor = load_processor(model_dir, False)
    pad = vision_token_id(model_dir, False)
    (row,) = generate_rows("add-vl", 1, seed=0)
    images = [row["images"][0], row["images"][0]]  # two images: two runs of pads
    messages = vision_messages("<image> and <image>: " + row["problem"].replace("<image>", ""),
                               [decode_image(i, None) for i in images], None, None)
    text, expanded, vision = encode_prompt(processor, messages)
    raw = processor.tokenizer(text)["input_ids"]
    assert expanded.count(pad) == int(vision["image_grid_thw"].prod(-1).sum()) // 4
    assert collapse_image_pads(expanded, pad) == raw and raw.count(pad) == 2


def test_prompts_carry_images_only_where_rows_have_them() -> None:
    request = RolloutRequest([[1, 9, 9, 9, 3], [1, 4]], n=2, max_new_tokens=8,
                             images=[["img-a"], []])
    text_and_image = vllm_prompts(request, image_token_id=9,
                                  mm_processor_kwargs={"max_pixels": 12544})
    assert text_and_image == [
        {"prompt_token_ids": [1, 9, 3], "multi_modal_data": {"image": ["img-a"]},
         "mm_processor_kwargs": {"max_pixels": 12544}},
        {"prompt_token_ids": [1, 4]},
    ]
    with pytest.raises(ValueError, match="vision-language model"):
        vllm_prompts(request, image_token_id=None)


def test_sampling_matches_the_hf_backend_settings() -> None:
    request = RolloutRequest([[1]], n=5, max_new_tokens=2048, temperature=0.7, top_p=0.9)
    kw = sampling_kwargs(request, [151645, 151643], seed=11)
    assert kw == {"n": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "max_tokens": 2048,
                  "min_tokens": 0, "logprobs": 0, "seed": 11,
                  "stop_token_ids": [151645, 151643], "detokenize": False,
                  "skip_special_tokens": False}


def test_prompt_seeds_are_reproducible_and_distinct() -> None:
    seeds = [prompt_seed(s, i) for s in (1000, 1001) for i in range(64)]
    assert seeds == [prompt_seed(s, i) for s in (1000, 1001) for i in range(64)]
    assert len(set(seeds)) == len(seeds) and prompt_seed(None, 3) is None
    # vLLM gives sample j of a prompt seed + j: no two samples of a batch share a seed
    samples = {s + j for s in seeds for j in range(16)}
    assert len(samples) == 16 * len(seeds)


def test_tensor_parallel_groups_are_consecutive_ranks() -> None:
    assert tp_groups(8, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert tp_groups(16, 8) == [list(range(8)), list(range(8, 16))]
    with pytest.raises(ValueError, match="must divide the 8 ranks"):
        tp_groups(8, 3)


class RecordingLLM:
    """Stand-in for vllm.LLM (needs a GPU): records calls, returns `StandIn` outputs."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.params: list[Any] = []
        self.prompts: list[dict] = []

    def sleep(self, level: int) -> None:
        self.calls.append(f"sleep{level}")

    def wake_up(self, tags: list[str]) -> None:
        self.calls.append("wake:" + ",".join(tags))

    def apply_model(self, fn: Any) -> list[Any]:
        self.calls.append("load_weights")
        model = types.SimpleNamespace(load_weights=lambda ws: self.loaded.extend(
            (n, t.clone()) for n, t in ws))
        return [fn(model)]

    def reset_prefix_cache(self) -> None:
        self.calls.append("reset_prefix_cache")

    def generate(self, prompts: list[dict], params: list[Any], use_tqdm: bool) -> list[Any]:
        self.calls.append("generate")
        self.prompts, self.params = prompts, params
        # each completion echoes its prompt's second token, so outputs can be told apart
        return [request_output(i, [completion(j, [prompt["prompt_token_ids"][1], EOS],
                                              [-0.5, -0.1], "stop")
                                   for j in range(p.kwargs["n"])])
                for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))]


class StandInSamplingParams:  # vllm.SamplingParams: keeps its keyword arguments
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def test_weights_are_pushed_after_optimiser_steps_between_wake_and_sampling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(
        SamplingParams=StandInSamplingParams))
    version = {"steps": 0}
    weight = torch.ones(2)
    llm = RecordingLLM()
    rollout = VLLMRollout(llm, [EOS], weights=lambda: iter([("w", weight)]),
                          weights_version=lambda: version["steps"], sleep_level=1)
    request = RolloutRequest([[1, 3], [1, 4]], n=2, max_new_tokens=4, seed=7)

    rollout.generate(request)  # step 0: the engine already holds the checkpoint's weights
    assert llm.calls == ["sleep1", "wake:weights", "wake:kv_cache", "generate", "sleep1"]
    assert [p.kwargs["seed"] for p in llm.params] == [prompt_seed(7, 0), prompt_seed(7, 1)]

    version["steps"] = 1  # an optimiser step changed the weights
    weight += 1.0
    llm.calls.clear()
    result = rollout.generate(request)
    assert llm.calls == ["wake:weights", "load_weights", "reset_prefix_cache",
                         "wake:kv_cache", "generate", "sleep1"]
    assert [(n, t.tolist()) for n, t in llm.loaded] == [("w", [2.0, 2.0])]
    assert len(result.completions) == 4 and result.timings["rollout_s"] >= 0

    llm.calls.clear()
    rollout.generate(request)  # no step since: nothing pushed
    assert "load_weights" not in llm.calls
