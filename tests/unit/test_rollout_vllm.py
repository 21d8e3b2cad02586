"""The vLLM backend's pure parts: prompts (image pads, multi-modal data), sampling
parameters, seeds, tensor-parallel groups, and the per-platform engine settings. They need no
vLLM; tests/vllm runs the real engine (output conversion, weight pushes, truncation)."""

from __future__ import annotations

import pytest

from grpo_cli.errors import ConfigError
from grpo_cli.rollout.base import RolloutRequest
from grpo_cli.rollout.vllm import (
    MiB,
    collapse_image_pads,
    engine_settings,
    finish_recorder,
    kv_bytes_per_token,
    per_sample,
    prompt_seed,
    sampling_kwargs,
    tp_groups,
    vllm_prompts,
)
from grpo_cli.startup import load_run_config


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


def test_each_sample_is_its_own_request_seeded_as_vllms_fan_out() -> None:
    request = RolloutRequest([[1]], n=3, max_new_tokens=16, temperature=0.7, top_p=0.9)
    kw = sampling_kwargs(request, [2], seed=11)
    split = per_sample(kw)
    assert [(s["n"], s["seed"]) for s in split] == [(1, 11), (1, 12), (1, 13)]
    assert all(s | {"n": 5, "seed": 11} == kw | {"n": 5} for s in split)  # nothing else moves
    assert [s["seed"] for s in per_sample(sampling_kwargs(request, [2], seed=None))] == \
        [None] * 3


def test_the_finish_recorder_counts_ended_requests_and_prints_nothing(
        capsys: pytest.CaptureFixture[str]) -> None:
    progress: list[tuple[float, int]] = []
    bar = finish_recorder(progress)(total=3, desc="Processed prompts", dynamic_ncols=True)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [ended for _, ended in progress] == [1, 2, 3]
    assert [t for t, _ in progress] == sorted(t for t, _ in progress)
    assert capsys.readouterr() == ("", "")


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


def test_kv_bytes_per_token_reads_the_language_model_config() -> None:
    from grpo_cli.models.toy import ensure_toy_model
    from grpo_cli.models.toy_vl import ensure_toy_vl_model

    # toy: 4 layers x 2 KV heads x head_dim 128/4, keys and values, fp32
    assert kv_bytes_per_token(ensure_toy_model(), "float32") == 2 * 4 * 2 * 32 * 4
    assert kv_bytes_per_token(ensure_toy_model(), "bfloat16") == 2 * 4 * 2 * 32 * 2
    # the VL toy's language model is the text toy (its text_config)
    assert kv_bytes_per_token(ensure_toy_vl_model(), "float32") == 2 * 4 * 2 * 32 * 4


def test_cpu_engine_gets_a_kv_cache_sized_for_the_run() -> None:
    # 16 prompts x 8 samples of up to 300 tokens: 3 blocks of 128 each, 46 KB per token
    s = engine_settings("cpu", sequences=128, max_model_len=300, bytes_per_token=46_080,
                        gpu_memory_utilization=None, sleep_level=None)
    need = 128 * 3 * 128 * 46_080
    assert need * 1.25 <= s.kwargs["kv_cache_memory_bytes"] < need * 1.25 + MiB
    assert "gpu_memory_utilization" not in s.kwargs and s.kwargs["enforce_eager"]
    assert s.sleep_level == 0 and s.reload_in_place
    assert "KV cache 2700 MiB for 128 sequences x 300 tokens" in s.summary
    tiny = engine_settings("cpu", sequences=2, max_model_len=64, bytes_per_token=2048,
                           gpu_memory_utilization=None, sleep_level=0)
    assert tiny.kwargs["kv_cache_memory_bytes"] == 64 * MiB  # the floor
    share = engine_settings("cpu", sequences=2, max_model_len=64, bytes_per_token=2048,
                            gpu_memory_utilization=0.2, sleep_level=None)
    assert share.kwargs == {"gpu_memory_utilization": 0.2, "enforce_eager": True}
    assert "0.2 of host RAM" in share.summary


def test_cuda_engine_keeps_sleep_mode_and_the_memory_share() -> None:
    s = engine_settings("cuda", sequences=128, max_model_len=4096, bytes_per_token=1,
                        gpu_memory_utilization=None, sleep_level=None)
    assert s.kwargs == {"gpu_memory_utilization": 0.5} and s.sleep_level == 1
    assert not s.reload_in_place  # load_weights into vLLM's own parameters
    s = engine_settings("cuda", sequences=1, max_model_len=1, bytes_per_token=1,
                        gpu_memory_utilization=0.6, sleep_level=2)
    assert s.kwargs == {"gpu_memory_utilization": 0.6} and s.sleep_level == 2


@pytest.mark.parametrize(("args", "message"), [
    (["rollout.sleep_level=1"], "rollout.sleep_level=1: vLLM has no sleep mode on CPU"),
    (["rollout.gpu_memory_utilization=0.999"],
     "rollout.gpu_memory_utilization=0.999: on CPU this reserves that share of host RAM"),
])
def test_cpu_build_refuses_what_it_cannot_do(args: list[str], message: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("grpo_cli.rollout.vllm_platform", lambda: "cpu")
    with pytest.raises(ConfigError, match=message):
        load_run_config(["rollout=vllm", *args])
    load_run_config(["rollout=vllm"])  # the defaults are valid on CPU
    load_run_config(["rollout=vllm", "rollout.gpu_memory_utilization=0.05"])


def test_without_vllm_the_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("grpo_cli.rollout.vllm_platform", lambda: None)
    with pytest.raises(ConfigError, match="rollout.backend=vllm needs vLLM"):
        load_run_config(["rollout=vllm"])


class SleepingEngine:
    """Stands in for vLLM's GPU engine, whose sleep mode exists only on CUDA: level 1 keeps
    the weights (offloaded), level 2 drops them; ``valid`` says whether the engine holds the
    pushed weights."""

    def __init__(self) -> None:
        self.valid, self.pushes, self.calls = True, 0, []

    def sleep(self, level: int) -> None:
        self.calls.append(f"sleep{level}")
        if level == 2:
            self.valid = False

    def wake_up(self, tags: list[str]) -> None:
        self.calls.append("wake_" + "_".join(tags))

    def apply_model(self, fn) -> None:  # noqa: ANN001
        self.pushes += 1
        self.valid = True

    def reset_prefix_cache(self) -> None: ...

    @property
    def llm_engine(self):  # noqa: ANN201
        return self

    def reset_encoder_cache(self) -> None: ...


@pytest.mark.parametrize(("level", "pushes"), [(1, 0), (2, 3)])
def test_level_2_sleep_pushes_the_weights_after_every_wake_up(level: int, pushes: int) -> None:
    """Level 2 drops the weights at creation and after each rollout: every rollout must push
    them, also at step 0 and when no optimiser step came between two rollouts (the probe,
    then the step's sampling). Level 1 keeps them: no push until they change."""
    from grpo_cli.rollout.vllm import VLLMRollout

    llm = SleepingEngine()
    rollout = VLLMRollout(llm, [0], weights=lambda: iter(()), weights_version=lambda: 0,
                          sleep_level=level)
    assert llm.calls == [f"sleep{level}"]
    for _ in range(3):  # three rollouts at the same weights version
        rollout._wake()
        assert llm.valid, "sampled from weights the engine dropped"
        rollout._sleep()
    assert llm.pushes == pushes
    assert llm.calls[1:4] == ["wake_weights", "wake_kv_cache", f"sleep{level}"]


def test_vllm_share_of_the_gpu_must_be_free_when_it_starts() -> None:
    from grpo_cli.rollout.vllm import gpu_share_problem

    GiB = 2**30
    assert gpu_share_problem(60 * GiB, 80 * GiB, 0.5) is None
    problem = gpu_share_problem(30 * GiB, 80 * GiB, 0.5)
    assert problem is not None and problem.startswith(
        "rollout.gpu_memory_utilization=0.5 asks vLLM for 40.0 GiB of this GPU's 80.0 GiB, "
        "but 30.0 GiB are free")
    assert "set it to 0.35 or less" in problem
