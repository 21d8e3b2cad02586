"""Dataset loading, prompt building and the prompt sampler (real tokenizer of the toy model)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpo_cli.config.schema import DataConfig
from grpo_cli.data.datasets import PromptSampler, build_prompts, length_budget, load_rows
from grpo_cli.errors import ConfigError
from grpo_cli.models.load import load_tokenizer
from grpo_cli.models.toy import TOY_MODEL_DIR


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TOY_MODEL_DIR))


def test_jsonl_and_parquet_load_the_same_rows(tmp_path: Path) -> None:
    rows = [{"problem": "1+2", "answer": "3"}, {"problem": "2+2+2", "answer": "6"}]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pqf = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pqf)
    assert load_rows(str(jl), DataConfig(), 0) == rows
    assert load_rows(str(pqf), DataConfig(), 0) == rows
    assert load_rows(f"{tmp_path}@d", DataConfig(), 0) == rows  # a directory of parts


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": oops}\n')
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        load_rows(str(f), DataConfig(), 0)


def test_toy_rows_are_deterministic() -> None:
    data = DataConfig(toy_size=16)
    assert load_rows("toy:add", data, 3) == load_rows("toy:add", data, 3)
    assert load_rows("toy:add", data, 3) != load_rows("toy:add", data, 4)


def test_long_prompts_are_dropped_and_counted(tokenizer) -> None:
    rows = [{"problem": "1+2", "answer": "3"}, {"problem": "+".join(["1"] * 40), "answer": "40"}]
    prompts = build_prompts(rows, DataConfig(max_prompt_length=20), tokenizer)
    assert prompts.dropped == 1 and len(prompts.prompt_ids) == 1
    assert prompts.rows[0]["answer"] == "3"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "1+2"}],
                                         add_generation_prompt=True, tokenize=False)
    assert prompts.texts[0] == text
    with pytest.raises(ConfigError, match="every prompt is longer"):
        build_prompts(rows[1:], DataConfig(max_prompt_length=5), tokenizer)


def test_template_and_missing_columns(tokenizer) -> None:
    rows = [{"question": "1+2", "answer": "3"}]
    with pytest.raises(ConfigError, match="data.prompt_key=problem"):
        build_prompts(rows, DataConfig(), tokenizer)
    ok = build_prompts(rows, DataConfig(prompt_key="question", prompt_template="{problem}"),
                       tokenizer)
    assert len(ok.prompt_ids) == 1
    with pytest.raises(ConfigError, match="data.answer_key=solution"):
        build_prompts(rows, DataConfig(prompt_key="question", answer_key="solution"), tokenizer)


def test_sampler_covers_each_epoch_and_resumes_exactly() -> None:
    s = PromptSampler(10, seed=1)
    first = s.next(10)
    assert sorted(first) == list(range(10))
    s.next(3)
    state = s.state_dict()
    rest = s.next(12)
    s2 = PromptSampler(10, seed=1)
    s2.load_state_dict(state)
    assert s2.next(12) == rest


def test_length_budgets_are_drawn_per_prompt_and_written_into_it(tokenizer) -> None:
    rows = [{"problem": f"{i}+1", "answer": str(i + 1)} for i in range(1, 9)]
    data = DataConfig(length_budget=[8, 32])
    prompts = build_prompts(rows, data, tokenizer, seed=3)
    assert prompts.budgets == [length_budget(3, i, 8, 32) for i in range(8)]
    assert all(8 <= b <= 32 for b in prompts.budgets)
    assert len(set(prompts.budgets)) > 1  # drawn per prompt, not one for all
    for row, text, b in zip(rows, prompts.texts, prompts.budgets, strict=True):
        assert text == f"{row['problem']} Think for {b} tokens.\n"  # the toy's chat template
    again = build_prompts(rows, data, tokenizer, seed=3)
    assert again.budgets == prompts.budgets and again.texts == prompts.texts
    other = build_prompts(rows, data, tokenizer, seed=4)
    assert other.budgets != prompts.budgets
    prefix = build_prompts(rows[:1], DataConfig(length_budget=[5, 5], length_budget_template=
                                                "Think for {budget} tokens.\n{prompt}"),
                           tokenizer)
    assert prefix.texts == ["Think for 5 tokens.\n1+1\n"] and prefix.budgets == [5]
    assert build_prompts(rows, DataConfig(), tokenizer).budgets is None


def test_length_budget_depends_only_on_seed_and_row() -> None:
    draws = [length_budget(0, i, 1, 4) for i in range(200)]
    assert set(draws) == {1, 2, 3, 4}  # both ends reachable
    assert draws == [length_budget(0, i, 1, 4) for i in range(200)]
    assert length_budget(7, 5, 10, 10) == 10
