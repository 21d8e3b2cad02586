"""The supervised warm start (model.warm_start) on the embedded toy model: its examples are
the run's own prompts, it learns what it is shown, it is built once per config and reused,
and building it leaves the run's random stream as it found it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo_cli.config.schema import DataConfig, WarmStartConfig
from grpo_cli.data.datasets import build_prompts
from grpo_cli.data.toy import generate_rows
from grpo_cli.errors import ConfigError
from grpo_cli.models import warm_start as ws
from grpo_cli.models.load import load_tokenizer
from grpo_cli.models.toy import TOY_MODEL_DIR

BASE = str(TOY_MODEL_DIR)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GRPO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def novel(tmp_path: Path) -> Path:
    """Toy problems with a solution format the toy never saw (it answers in tags)."""
    path = tmp_path / "novel.jsonl"
    with path.open("w") as f:
        for row in generate_rows("add", 64, seed=11):
            f.write(json.dumps({**row, "solution": f"total {row['answer']} ok"}) + "\n")
    return path


def solution_nll(model_dir: Path | str, rows: list[dict], data: DataConfig) -> float:
    """Mean per-token NLL of the rows' solutions + EOS after their prompts."""
    from transformers import AutoModelForCausalLM

    from grpo_cli.models.sft import pad_batch

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    examples = ws.build_examples(rows, WarmStartConfig(data="x"), data, tok)
    with torch.no_grad():
        return model(*pad_batch(examples, tok.pad_token_id)[:1],
                     labels=pad_batch(examples, tok.pad_token_id)[1]).loss.item()


@pytest.mark.parametrize("template", ["{problem}", "Add these: {problem} ="])
def test_examples_are_the_runs_prompts_then_the_solution(template: str) -> None:
    data = DataConfig(prompt_template=template)
    tok = load_tokenizer(BASE)
    rows = generate_rows("add", 12, seed=5)
    examples = ws.build_examples(rows, WarmStartConfig(data="toy:add"), data, tok)
    prompts = build_prompts(rows, data, tok)
    assert len(examples) == len(prompts.prompt_ids) == 12
    for (ids, n), prompt, row in zip(examples, prompts.prompt_ids, rows, strict=True):
        assert ids[:n] == list(prompt)
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids[n:-1]) == row["solution"]


def test_a_row_without_solution_text_is_named() -> None:
    rows = [{"problem": "1+2", "answer": "3", "solution": ""}]
    with pytest.raises(ConfigError, match="model.warm_start.solution_key=solution"):
        ws.build_examples(rows, WarmStartConfig(data="f.jsonl"), DataConfig(),
                          load_tokenizer(BASE))


def test_it_learns_the_solutions_and_is_built_once(cache: Path, novel: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = DataConfig()
    warm = WarmStartConfig(data=str(novel), steps=40, batch_size=8, lr=3e-3)
    logs: list[str] = []
    out = ws.ensure_warm_started(BASE, warm, data, log=logs.append)
    assert out.parent == cache / "warm-start"
    record = json.loads((out / ws.RECORD).read_text())
    assert record["examples"] == 64 and record["final_loss"] < record["first_loss"] / 2
    assert any(line.startswith("warm start: 40 supervised steps") for line in logs)
    rows = [json.loads(line) for line in novel.read_text().splitlines()]
    base_nll, warm_nll = solution_nll(BASE, rows, data), solution_nll(out, rows, data)
    assert warm_nll < base_nll / 3, (base_nll, warm_nll)

    # the same config again: the cached dir, nothing trained or said
    monkeypatch.setattr(ws, "build", lambda *a, **k: pytest.fail("rebuilt a cached warm start"))
    logs.clear()
    assert ws.ensure_warm_started(BASE, warm, data, log=logs.append) == out
    assert logs == []


def test_the_key_follows_what_shapes_the_weights(tmp_path: Path) -> None:
    base, data = Path(BASE), DataConfig()
    warm = WarmStartConfig(data="toy:add")
    key = ws.cache_key(base, warm, data)
    assert ws.cache_key(base, WarmStartConfig(data="toy:add"), DataConfig()) == key
    # not the run's own caps or sizes
    assert ws.cache_key(base, warm, DataConfig(max_response_length=999, toy_size=7)) == key
    changed = [
        ws.cache_key(base, WarmStartConfig(data="toy:add", steps=101), data),
        ws.cache_key(base, WarmStartConfig(data="toy:add", lr=2e-4), data),
        ws.cache_key(base, WarmStartConfig(data="toy:add", seed=1), data),
        ws.cache_key(base, WarmStartConfig(data="toy:add", batch_size=8), data),
        ws.cache_key(base, WarmStartConfig(data="toy:long-sums"), data),
        ws.cache_key(base, warm, DataConfig(prompt_template="Q: {problem}")),
        ws.cache_key(base, warm, DataConfig(max_prompt_length=32)),
    ]
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((base / "config.json").read_text() + " ")
    changed.append(ws.cache_key(other, warm, data))
    assert len({key, *changed}) == len(changed) + 1


def test_building_leaves_the_runs_random_stream_and_threads_alone(cache: Path) -> None:
    warm = WarmStartConfig(data="toy:add", steps=3, batch_size=4)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    ws.ensure_warm_started(BASE, warm, DataConfig(), log=lambda _: None)  # builds
    built = torch.rand(4)
    assert torch.get_num_threads() == threads
    torch.manual_seed(123)
    ws.ensure_warm_started(BASE, warm, DataConfig(), log=lambda _: None)  # cached
    assert torch.equal(torch.rand(4), built)


def test_bases_it_cannot_warm_start_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a hub id"):
        ws.ensure_warm_started("HuggingFaceTB/SmolLM2-135M-Instruct",
                               WarmStartConfig(data="toy:add"), DataConfig())
    (tmp_path / "config.json").write_text('{"vision_config": {}}')
    with pytest.raises(ConfigError, match="text models only"):
        ws.ensure_warm_started(str(tmp_path), WarmStartConfig(data="toy:add"), DataConfig())


BUILDER = """
import sys, time
from pathlib import Path
from grpo_cli.models.cache import build_once
target, log = Path(sys.argv[1]), Path(sys.argv[2])
def build(out):
    with log.open("a") as f:
        f.write("built\\n")
    time.sleep(1.5)
    (out / "done").write_text("x")
print(build_once(target, build, lambda d: (d / "done").is_file()))
"""


def test_concurrent_callers_wait_for_one_build(tmp_path: Path) -> None:
    """Two processes (as two sweep arms or ranks) ask for the same missing dir at once."""
    target, log = tmp_path / "c" / "model", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(target), str(log)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(target)] * 2
    assert log.read_text() == "built\n"
    assert (target / "done").is_file()
