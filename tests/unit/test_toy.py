"""The toy lab: the synthetic addition task, the tokenizer and the committed tiny Qwen2."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from grpo_cli.data.toy import (
    STYLES,
    TOY_TASKS,
    export_jsonl,
    generate_rows,
    render_solution,
    style_of,
)
from grpo_cli.models.toy import (
    TOY_MODEL_DIR,
    build_config,
    build_tokenizer,
    ensure_toy_model,
    evaluate_toy_model,
    warm_up,
)

ANSWER = re.compile(r"<answer>(\d+)</answer>$")


def test_rows_are_deterministic_and_extend_with_size() -> None:
    rows = generate_rows("add", size=50, seed=3)
    assert rows == generate_rows("add", size=50, seed=3)
    assert rows != generate_rows("add", size=50, seed=4)
    assert generate_rows("add", size=20, seed=3) == rows[:20]
    assert all(set(r) == {"problem", "answer", "solution"} for r in rows)


def test_answers_are_the_sums_and_solutions_end_with_the_tag() -> None:
    for row in generate_rows("add", size=300, seed=0):
        terms = [int(t) for t in row["problem"].split("+")]
        assert 2 <= len(terms) <= 6 and all(1 <= t <= 9 for t in terms)
        assert len(set(terms)) == len(terms)  # distinct terms, see _row
        assert row["answer"] == str(sum(terms))
        match = ANSWER.search(row["solution"])
        assert match and match.group(1) == row["answer"]
        for line in row["solution"].splitlines():  # every written (chained) equation is true
            if re.fullmatch(r"[\d+]+(=[\d+]+)+", line):
                sides = [sum(int(t) for t in side.split("+")) for side in line.split("=")]
                assert len(set(sides)) == 1, line


def test_unknown_task_names_the_allowed_ones() -> None:
    assert "add" in TOY_TASKS
    with pytest.raises(ValueError, match="add"):
        generate_rows("multiply", size=1, seed=0)


def test_styles_are_recognised_and_spread_lengths() -> None:
    nums = [3, 5, 2, 7, 4, 6]
    lengths = {}
    for style in STYLES:
        solution = render_solution(nums, style, random.Random(0))
        assert style_of(solution) == style
        lengths[style] = len(solution)
    assert lengths["jump"] < lengths["terse"] < lengths["stepwise"] < lengths["verbose"]
    rows = generate_rows("add", size=1000, seed=1)
    assert {style_of(r["solution"]) for r in rows} == set(STYLES)
    sizes = sorted(len(r["solution"]) for r in rows)
    assert sizes[0] < 25 and sizes[-1] > 120  # characters = tokens, minus the two tags


def test_long_sums_are_worked_in_prose_and_graded_by_their_last_number() -> None:
    """The warm start's task: every reference solution, whatever its style, scores 1 under
    the reward the SmolLM2 study uses, and the styles spread length as documented."""
    from grpo_cli.data.toy import LONG_STYLE_WEIGHTS, long_sums, render_prose_solution
    from grpo_cli.rewards.math import final_answer_score

    rows = generate_rows("long-sums", size=400, seed=2)
    assert rows == long_sums(400, seed=2) and rows != long_sums(400, seed=3)
    assert generate_rows("long-sums", size=40, seed=2) == rows[:40]
    for row in rows:
        terms = [int(t) for t in row["problem"].removeprefix("What is ").rstrip("?").split(" + ")]
        assert 3 <= len(terms) <= 5 and all(1 <= t <= 9 for t in terms)
        assert row["answer"] == str(sum(terms))
    scores = final_answer_score([{"response": r["solution"], "ground_truth": r["answer"]}
                                 for r in rows])
    assert all(s["overall"] == 1.0 for s in scores)
    wrong = final_answer_score([{"response": r["solution"], "ground_truth": "99"}
                                for r in rows[:20]])
    assert all(s["overall"] == 0.0 for s in wrong)
    nums = [3, 8, 5, 2]
    words = [len(render_prose_solution(nums, s).split()) for s in STYLES]
    assert words == sorted(words) and len(set(words)) == 4
    assert render_prose_solution(nums, "stepwise") == (
        "3 + 8 = 11. 11 + 5 = 16. 16 + 2 = 18. The answer is 18.")
    three = generate_rows("three-sums", size=100, seed=2)
    assert all(r["problem"].count(" + ") == 2 for r in three)
    assert [r["problem"] for r in three] != [r["problem"] for r in rows[:100]]
    first_words = {r["solution"].split()[0] for r in rows}
    assert first_words >= {"The", "We"} and len(LONG_STYLE_WEIGHTS) == len(STYLES)


def test_export_jsonl_writes_dataset_rows(tmp_path: Path) -> None:
    path = export_jsonl(tmp_path / "toy.jsonl", task="add", size=5, seed=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == generate_rows("add", size=5, seed=2)


def test_tokenizer_round_trips_and_has_single_token_tags() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)
    assert tok.padding_side == "left"
    assert (tok.pad_token, tok.eos_token) == ("<pad>", "<eos>")
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    solution = generate_rows("add", size=1, seed=0)[0]["solution"] + "\n ünïcode ☃"
    ids = tok(solution, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == solution
    tags = [tok.convert_tokens_to_ids(t) for t in ("<answer>", "</answer>")]
    assert all(tok(t, add_special_tokens=False)["input_ids"] == [i]
               for t, i in zip(("<answer>", "</answer>"), tags, strict=True))
    # The trainer decodes with skip_special_tokens=True: the tags must survive, EOS must not.
    tagged = tok("<answer>7</answer>", add_special_tokens=False)["input_ids"]
    assert tok.decode(tagged + [tok.eos_token_id], skip_special_tokens=True) == (
        "<answer>7</answer>")
    prompt = tok.apply_chat_template([{"role": "user", "content": "3+5"}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt == "3+5\n"
    # The committed tokenizer is the one the builder makes.
    built = build_tokenizer()
    assert built(solution, add_special_tokens=False)["input_ids"] == ids
    assert len(built) == len(tok)


def test_committed_model_loads_and_is_tiny() -> None:
    from transformers import AutoModelForCausalLM

    assert ensure_toy_model() == TOY_MODEL_DIR
    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert 300_000 <= sum(p.numel() for p in model.parameters()) <= 2_000_000
    assert (model.config.eos_token_id, model.config.pad_token_id) == (1, 0)
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (1, 0)
    size = sum(f.stat().st_size for f in TOY_MODEL_DIR.iterdir() if f.is_file())
    assert size < 5_000_000


def test_warm_up_is_deterministic_for_a_seed() -> None:
    from transformers import Qwen2ForCausalLM

    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        tok = build_tokenizer()
        model = Qwen2ForCausalLM(build_config(tok))
        warm_up(model, tok, seed=0, steps=2, batch_size=4, log=lambda _: None)
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_evaluate_reports_truncation_by_cap() -> None:
    short = evaluate_toy_model(TOY_MODEL_DIR, num_prompts=8, max_new_tokens=8, n=2)
    assert short["samples"] == 16
    assert short["truncated_share"] >= 0.5 and short["length_max"] <= 8
    long = evaluate_toy_model(TOY_MODEL_DIR, num_prompts=8, max_new_tokens=256, n=2)
    assert long["truncated_share"] <= 0.15
    assert 0.0 <= long["accuracy"] <= 1.0
    assert long["length_p10"] <= long["length_p50"] <= long["length_p90"] <= long["length_max"]
    assert set(long["by_style"]) <= set(STYLES)


def test_committed_model_is_competent_but_imperfect() -> None:
    """The RL starting point the issue asks for: 40-90% accurate at T=1 under a generous cap,
    lengths spread so that a small cap truncates a large share and a large cap almost none."""
    generous = evaluate_toy_model(TOY_MODEL_DIR, num_prompts=128, max_new_tokens=200, n=2,
                                  caps=(32, 160))
    assert 0.4 <= generous["accuracy"] <= 0.9, generous
    assert generous["truncated_share"] <= 0.01
    assert generous["length_p10"] <= 10 and generous["length_p90"] >= 60
    assert generous["truncated_share_at"][32] >= 0.4
    assert generous["truncated_share_at"][160] <= 0.02


def test_a_smaller_cap_cuts_what_its_first_steps_sample() -> None:
    """truncated_share_at[c] from one generous sampling equals sampling at cap c itself."""
    generous = evaluate_toy_model(TOY_MODEL_DIR, num_prompts=16, max_new_tokens=64, n=2,
                                  caps=(12,))
    capped = evaluate_toy_model(TOY_MODEL_DIR, num_prompts=16, max_new_tokens=12, n=2)
    assert 0 < capped["truncated_share"] < 1
    assert generous["truncated_share_at"][12] == capped["truncated_share"]
