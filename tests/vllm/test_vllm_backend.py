"""The vLLM backend against a real engine (the CPU build here, the GPU build on a GPU), on the
embedded toy model: vLLM's own output classes become completions, pushed weights make the
engine's log-probs equal the trainer's forward pass (tied head included), truncation is
vLLM's finish reason, and training keeps its torch threads.

Thresholds come from what broken pushes measure on the toy in fp32: a correct push leaves
~3e-7 per token, a skipped push ~1e-2 and a stale tied head ~1e-3 after one optimiser step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from grpo_cli.data.datasets import build_prompts
from grpo_cli.data.toy import generate_rows
from grpo_cli.rollout.base import Completion, RolloutRequest

pytestmark = pytest.mark.vllm

CORRECT = 1e-5  # mean |log p_vllm - log p_trainer| per token after a correct push


class Toy:
    """The toy policy in transformers, and a real engine started from the same checkpoint."""

    def __init__(self) -> None:
        from transformers import AutoModelForCausalLM

        from grpo_cli.config.schema import DataConfig
        from grpo_cli.models.load import eos_token_ids, load_tokenizer
        from grpo_cli.models.toy import ensure_toy_model
        from grpo_cli.rollout import vllm_platform
        from grpo_cli.rollout.vllm import VLLMRollout, engine_settings, kv_bytes_per_token
        from grpo_cli.train import engine as eng
        from grpo_cli.train.weights import checkpoint_names, iter_full_params

        eng.init_distributed()  # the external launcher joins this process's group
        path = str(ensure_toy_model())
        self.tokenizer = load_tokenizer(path)
        self.eos = eos_token_ids(self.tokenizer, path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        names = checkpoint_names(self.model)
        self.version = 0
        platform = vllm_platform()
        assert platform is not None
        self.threads_before = torch.get_num_threads()
        settings = engine_settings(platform, sequences=64, max_model_len=256,
                                   bytes_per_token=kv_bytes_per_token(path, "float32"),
                                   gpu_memory_utilization=None, sleep_level=None)
        self.rollout = VLLMRollout.create(
            path, "float32", 256, 0, settings=settings, tensor_parallel_size=1, world=1,
            rank=0, eos_token_ids=self.eos,
            weights=lambda: iter_full_params(self.model, 0, names),
            weights_version=lambda: self.version)
        rows = generate_rows("add", 8, seed=3)
        self.prompts = build_prompts(rows, DataConfig(), self.tokenizer, None, "toy:add")

    def sample(self, cap: int, n: int = 4, prompts: int = 4, seed: int = 1) -> list[Completion]:
        request = RolloutRequest(self.prompts.prompt_ids[:prompts], n=n, max_new_tokens=cap,
                                 seed=seed)
        return self.rollout.generate(request).completions

    @torch.no_grad()
    def gap(self, completions: list[Completion]) -> float:
        """Mean |sampler log-prob - transformers log-prob| per generated token."""
        total, count = 0.0, 0
        for c in completions:
            prompt = self.prompts.prompt_ids[c.prompt_index]
            ids = torch.tensor([prompt + c.token_ids])
            logits = self.model(ids).logits[0, len(prompt) - 1 : -1]  # [T, V]
            ref = torch.log_softmax(logits.float(), -1)[torch.arange(len(c.token_ids)),
                                                        torch.tensor(c.token_ids)]
            total += float((ref - torch.tensor(c.logprobs)).abs().sum())
            count += len(c.token_ids)
        return total / count

    @torch.no_grad()
    def update(self, scale: float = 0.02, only: str | None = None) -> None:
        """Move the transformers weights as an optimiser step would (all, or one tensor)."""
        gen = torch.Generator().manual_seed(self.version)
        for name, p in self.model.named_parameters():
            if only is None or name == only:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def toy() -> Iterator[Toy]:
    yield Toy()


def test_training_keeps_its_torch_threads(toy: Toy) -> None:
    """vLLM's CPU worker swaps torch.set_num_threads for a no-op and serves on 1 thread."""
    assert torch.get_num_threads() == toy.threads_before
    torch.set_num_threads(1)
    try:
        assert torch.get_num_threads() == 1  # the real setter again
    finally:
        torch.set_num_threads(toy.threads_before)


def test_engine_samples_with_the_trainers_distribution(toy: Toy) -> None:
    comps = toy.sample(cap=24)
    assert len(comps) == 16 and [c.sample for c in comps[:4]] == [0, 1, 2, 3]
    assert toy.gap(comps) < CORRECT


def test_one_request_per_sample_draws_what_vllms_own_fan_out_draws(toy: Toy) -> None:
    """The backend submits each sample as its own request (n=1, seed + j) so that the engine
    reports each completion's end; vLLM's fan-out of one request with n and seed gives the
    same tokens, so the split changes no draw."""
    from vllm import SamplingParams

    from grpo_cli.rollout.vllm import per_sample, sampling_kwargs, vllm_prompts

    request = RolloutRequest(toy.prompts.prompt_ids[:2], n=4, max_new_tokens=24)
    prompts = vllm_prompts(request, None)
    kwargs = [sampling_kwargs(request, toy.eos, seed=1000 + i) for i in range(2)]
    fanned = toy.rollout.llm.generate(prompts, [SamplingParams(**k) for k in kwargs],
                                      use_tqdm=False)
    split = toy.rollout.llm.generate(
        [p for p in prompts for _ in range(4)],
        [SamplingParams(**one) for k in kwargs for one in per_sample(k)], use_tqdm=False)
    want = [list(c.token_ids) for out in fanned
            for c in sorted(out.outputs, key=lambda c: c.index)]
    assert [list(out.outputs[0].token_ids) for out in split] == want
    assert len({tuple(t) for t in want}) > 1  # distinct samples, not one draw repeated


def test_the_engine_reports_each_completions_end(toy: Toy) -> None:
    """The rollout tail's clock: one (time, ended so far) entry per completion as the engine
    step that ends it returns, the longest last; the backend's tail_s lies inside its
    rollout_s."""
    from vllm import SamplingParams

    from grpo_cli.rollout.vllm import finish_recorder, per_sample, sampling_kwargs, vllm_prompts

    request = RolloutRequest(toy.prompts.prompt_ids[:4], n=4, max_new_tokens=48)
    progress: list[tuple[float, int]] = []
    outputs = toy.rollout.llm.generate(
        [p for p in vllm_prompts(request, None) for _ in range(4)],
        [SamplingParams(**one) for i in range(4)
         for one in per_sample(sampling_kwargs(request, toy.eos, seed=7 + i))],
        use_tqdm=finish_recorder(progress))
    assert [ended for _, ended in progress] == list(range(1, 17))
    times = [t for t, _ in progress]
    assert times == sorted(times)
    lengths = [len(out.outputs[0].token_ids) for out in outputs]
    assert len(set(lengths)) > 1  # rows of different lengths: a tail to time
    result = toy.rollout.generate(RolloutRequest(toy.prompts.prompt_ids[:4], n=4,
                                                 max_new_tokens=48, seed=7))
    assert 0.0 <= result.timings["tail_s"] < result.timings["rollout_s"]


def test_pushed_weights_reach_the_engine_every_step(toy: Toy) -> None:
    from grpo_cli.rollout.vllm import repack_shared_weights

    for step in range(1, 3):
        toy.update()
        stale = toy.gap(toy.sample(cap=24, seed=step))  # version unchanged: nothing pushed
        assert stale > 100 * CORRECT, stale
        toy.version = step  # an optimiser step happened: the next rollout pushes
        assert toy.gap(toy.sample(cap=24, seed=step)) < CORRECT
    if toy.rollout.reload_in_place:  # CPU: the tied head is repacked from the embedding
        (redone,) = toy.rollout.llm.apply_model(repack_shared_weights)
        assert sorted(redone) == ["lm_head.weight", "model.embed_tokens.weight"]


def test_a_changed_embedding_reaches_the_tied_head(toy: Toy) -> None:
    """Only the embedding moves: the output head, which is the same tensor, must follow."""
    toy.update(scale=0.05, only="model.embed_tokens.weight")
    toy.version += 1
    assert toy.gap(toy.sample(cap=24, seed=11)) < CORRECT


def test_truncation_is_vllms_finish_reason(toy: Toy) -> None:
    """`truncated` is finish_reason == "length": a completion whose EOS is the cap-th token
    finished, and is not truncated although its length equals the cap."""
    cap = 10  # the toy often answers in exactly 10 tokens (EOS included)
    comps = toy.sample(cap=cap, n=16, prompts=8, seed=5)
    for c in comps:
        assert len(c.token_ids) <= cap and len(c.logprobs) == len(c.token_ids)
        if c.truncated:
            assert len(c.token_ids) == cap and c.token_ids[-1] not in toy.eos
        else:
            assert c.token_ids[-1] in toy.eos  # EOS kept, as the hf backend keeps it
    at_cap = [c for c in comps if len(c.token_ids) == cap]
    assert any(not c.truncated for c in at_cap), "no completion ended exactly at the cap"
    assert any(c.truncated for c in at_cap)


def _outputs(**kw: Any) -> list[Any]:
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    def completion(index: int, tokens: list[int], lps: list[float], reason: str) -> Any:
        # logprobs=1 style: the sampled token plus a higher-ranked one; the sampled one is read
        positions = [{t: Logprob(lp, rank=2), 99: Logprob(-0.01, rank=1)}
                     for t, lp in zip(tokens, lps, strict=True)]
        return CompletionOutput(index=index, text="", token_ids=tokens,
                                cumulative_logprob=sum(lps), logprobs=positions,
                                finish_reason=reason)

    return [RequestOutput(request_id=str(i), prompt=None, prompt_token_ids=[1, 5],
                          prompt_logprobs=None, finished=True,
                          outputs=[completion(*c) for c in outs])
            for i, outs in enumerate(kw["groups"])]


def test_vllm_output_classes_become_completions_in_sample_order() -> None:
    from grpo_cli.rollout.vllm import completions_from_outputs

    eos = 2
    outputs = _outputs(groups=[  # one request per sample, prompt-major (per_sample)
        [(0, [4, eos], [-1.0, -0.1], "stop")], [(0, [7, 8, 9], [-0.5, -0.25, -2.0], "length")],
        [(0, [eos], [-0.3], "stop")], [(0, [5, 6, 7], [-0.7, -0.8, -0.9], "length")],
    ])
    comps = completions_from_outputs(outputs, n=2)
    assert [(c.prompt_index, c.sample) for c in comps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert comps[0].token_ids == [4, eos] and not comps[0].truncated
    assert comps[1].truncated and comps[1].logprobs == [-0.5, -0.25, -2.0]
    assert comps[2].token_ids == [eos] and comps[2].logprobs == [-0.3]


@pytest.mark.parametrize(("groups", "n", "message"), [
    ([[(0, [3], [-1.0], "abort")]], 1, "reason 'abort'"),
    ([[(0, [3], [-1.0], "stop"), (1, [3], [-1.0], "stop")]], 1, "request 0, which asked for one"),
    ([[(0, [3], [-1.0], "stop")]] * 3, 2, "not a multiple of rollout.n=2"),
])
def test_unexpected_outputs_are_errors_not_numbers(groups: list, n: int, message: str) -> None:
    from grpo_cli.rollout.vllm import completions_from_outputs

    with pytest.raises(RuntimeError, match=message):
        completions_from_outputs(_outputs(groups=groups), n=n)


def test_missing_logprobs_are_an_error() -> None:
    from grpo_cli.rollout.vllm import completions_from_outputs

    (out,) = _outputs(groups=[[(0, [3, 4], [-1.0, -1.0], "stop")]])
    out.outputs[0].logprobs = None
    with pytest.raises(RuntimeError, match="no log-prob"):
        completions_from_outputs([out], n=1)
