"""The hf rollout backend on a tiny random Qwen2: finish reasons, grouping, sampling log-probs."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from grpo_cli.rollout.base import RolloutRequest
from grpo_cli.rollout.hf import HFRollout

PAD, EOS = 0, 2


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                      eos_token_id=EOS, pad_token_id=PAD)
    return Qwen2ForCausalLM(cfg).eval()


def backend(model: Qwen2ForCausalLM, micro: int = 64, drop: bool = False,
            eos: tuple[int, ...] = (EOS,)) -> HFRollout:
    """``drop``: rows leave the batch at EOS (rollout/decode.py) instead of `generate`."""
    return HFRollout(lambda: contextlib.nullcontext(model), PAD, list(eos),
                     micro_batch_size=micro, drop_finished=drop)


PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8], [10]]


@pytest.mark.parametrize("drop", [False, True])
def test_completions_are_grouped_and_finish_reasons_match_tokens(model: Qwen2ForCausalLM,
                                                                 drop: bool) -> None:
    torch.manual_seed(1)
    cap = 6
    res = backend(model, micro=5, drop=drop).generate(
        RolloutRequest(PROMPTS, n=3, max_new_tokens=cap))
    comps = res.completions
    expected = [(p, s) for p in range(4) for s in range(3)]
    assert [(c.prompt_index, c.sample) for c in comps] == expected
    reasons = {c.finish_reason for c in comps}
    assert reasons == {"stop", "length"}, "random model should both stop and hit the cap"
    for c in comps:
        assert len(c.logprobs) == len(c.token_ids) >= 1
        assert all(lp <= 0 for lp in c.logprobs)
        if c.truncated:
            assert len(c.token_ids) == cap and EOS not in c.token_ids
        else:
            assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_logprobs_match_a_teacher_forced_forward(
    model: Qwen2ForCausalLM, temperature: float, drop: bool
) -> None:
    """Left padding and the recorder (or the decode loop that drops ended rows, with its
    positions and trimmed cache) give the same log-probs as an unpadded forward."""
    torch.manual_seed(2)
    res = backend(model, drop=drop).generate(
        RolloutRequest(PROMPTS, n=2, max_new_tokens=5, temperature=temperature)
    )
    for c in res.completions:
        prompt = PROMPTS[c.prompt_index]
        ids = torch.tensor([prompt + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1] / temperature
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None])
        torch.testing.assert_close(torch.tensor(c.logprobs), expected[:, 0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("drop", [False, True])
def test_top_p_renormalises_over_the_kept_tokens(model: Qwen2ForCausalLM, drop: bool) -> None:
    torch.manual_seed(3)
    res = backend(model, drop=drop).generate(
        RolloutRequest(PROMPTS, n=4, max_new_tokens=4, top_p=0.5))
    for c in res.completions:
        prompt = PROMPTS[c.prompt_index]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
        full = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
        # Under top-p the kept set's mass is renormalised, so sampled tokens gain probability.
        assert torch.all(torch.tensor(c.logprobs) >= full - 1e-5)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
@pytest.mark.parametrize("eos", [(), (EOS,)], ids=["no-row-ends", "rows-end"])
def test_the_decode_loop_draws_what_generate_draws(
        model: Qwen2ForCausalLM, temperature: float, top_p: float, eos: tuple[int, ...]) -> None:
    """The loop consumes the random stream as `generate` does, also after rows have ended
    and left its batch: the same seed gives the same tokens, finish reasons and log-probs
    (prefill positions, cache, warpers and the draw all agree)."""
    request = RolloutRequest(PROMPTS, n=3, max_new_tokens=12, temperature=temperature,
                             top_p=top_p)
    got = {}
    for drop in (False, True):
        torch.manual_seed(4)
        got[drop] = backend(model, micro=8, drop=drop, eos=eos).generate(request).completions
    for a, b in zip(got[False], got[True], strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                   atol=1e-5, rtol=0)
    if eos:  # rows did end early, in both calls of 8 and 4 rows
        ended = [len(c.token_ids) for c in got[True] if c.finish_reason == "stop"]
        assert len(ended) >= 2 and min(ended) < 12


def test_eos_exactly_at_the_cap_is_not_truncation(model: Qwen2ForCausalLM) -> None:
    b = backend(model)
    stopped = b._completion(0, 0, torch.tensor([5, 6, EOS]), torch.zeros(3), max_new_tokens=3)
    assert stopped.finish_reason == "stop" and stopped.token_ids == [5, 6, EOS]
    cut = b._completion(0, 0, torch.tensor([5, 6, 7]), torch.zeros(3), max_new_tokens=3)
    assert cut.finish_reason == "length"
    padded = b._completion(0, 1, torch.tensor([5, EOS, PAD, PAD]), torch.zeros(4), 4)
    assert padded.token_ids == [5, EOS] and len(padded.logprobs) == 2


def test_several_eos_ids_all_stop(model: Qwen2ForCausalLM) -> None:
    b = HFRollout(lambda: contextlib.nullcontext(model), PAD, [EOS, 11])
    c = b._completion(0, 0, torch.tensor([5, 11, PAD]), torch.zeros(3), max_new_tokens=3)
    assert c.finish_reason == "stop" and c.token_ids == [5, 11]


def test_out_of_memory_names_the_settings_to_lower(model: Qwen2ForCausalLM,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA out-of-memory cannot happen on this CPU machine, so `generate` is replaced by
    one that raises torch's OutOfMemoryError (the GPU boundary); the rest is real."""
    from grpo_cli.errors import RolloutOutOfMemory

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "generate", oom)
    with pytest.raises(RolloutOutOfMemory) as err:
        backend(model, micro=4).generate(RolloutRequest(PROMPTS, n=3, max_new_tokens=8))
    msg = str(err.value)
    for key in ("rollout.micro_batch_size (now 4)", "data.max_response_length (now 8)",
                "rollout.n (now 3)", "4 sequences"):
        assert key in msg
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


def test_cli_reports_out_of_memory_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from grpo_cli.cli import _guard
    from grpo_cli.errors import RolloutOutOfMemory

    def fail() -> None:
        raise RolloutOutOfMemory.advise(64, 2048, 5, 64)

    with pytest.raises(typer.Exit) as ex:
        _guard(fail, debug=False)
    assert ex.value.exit_code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory while sampling 64")


def test_tail_seconds_count_from_the_step_90_percent_had_ended() -> None:
    from grpo_cli.rollout.base import tail_seconds

    # 10 rows: 5 end at t=1, 9 by t=2, the last at t=5: 3 s of the 5 were the tail
    progress = [(1.0, 5), (2.0, 9), (3.0, 9), (5.0, 10)]
    assert tail_seconds(0.0, progress, 10) == 3.0
    assert tail_seconds(0.0, [(1.0, 10)], 10) == 0.0  # all ended together: no tail
    assert tail_seconds(0.0, [(1.0, 2), (4.0, 2)], 10) == 0.0  # the cap cut the rest
    assert tail_seconds(0.0, [], 10) == 0.0


@pytest.mark.parametrize("drop", [False, True])
def test_the_decode_loop_times_its_tail_and_generate_does_not(model: Qwen2ForCausalLM,
                                                              drop: bool) -> None:
    torch.manual_seed(1)
    res = backend(model, micro=5, drop=drop).generate(
        RolloutRequest(PROMPTS, n=3, max_new_tokens=16))
    assert res.timings["rollout_s"] > 0
    if not drop:  # generate gives no per-step progress
        assert "tail_s" not in res.timings
        return
    assert 0 <= res.timings["tail_s"] < res.timings["rollout_s"]
