"""The embedded toy task: add 2-6 distinct numbers from 1-9, answer in ``<answer>N</answer>``.

Reference solutions come in four styles whose lengths differ by an order of magnitude, so
the warmed-up policy samples a wide length distribution and RL can trade length for risk
(3+5+2+7 shown, one line per step):

- ``jump`` (~5 tokens): ``<answer>17</answer>``; a 1M-parameter model is mostly wrong.
- ``terse``: several terms merged per step (``3+5+2=10``, ``3+5+2+7=10+7=17``); shorter,
  but multi-term sums are error-prone.
- ``stepwise``: one term per step (``3+5=8``, ``3+5+2=8+2=10``, ``3+5+2+7=10+7=17``).
- ``verbose``: restates the problem (``add 3+5+2+7``), goes stepwise, then restates the
  result (``so the sum is 17``); ~35-115 tokens.

Under a small token cap long answers are truncated (reward 0), so "short is safe"; under a
generous cap the accurate long styles win. The toy tokenizer is byte-level, one token per
character, except the two answer tags which are one token each.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

# add-vl: the same sums for vision-language models; the problem is also drawn in an image
# (PNG bytes in the ``images`` column, an ``<image>`` placeholder before the text).
# sums: "What is 3 + 5?" in plain words, for real chat models (no reference solutions).
# long-sums: "What is 3 + 8 + 5 + 2?" (3-5 terms) with worked solutions in prose, for a real
# model's supervised warm start (model.warm_start); three-sums: the same with 3 terms, the
# RL task of the SmolLM2 cap study.
TOY_TASKS: tuple[str, ...] = ("add", "add-vl", "sums", "long-sums", "three-sums")
# Tasks whose rows carry a reference ``solution`` (what a warm start imitates).
SOLVED_TASKS: tuple[str, ...] = ("add", "add-vl", "long-sums", "three-sums")
IMAGE_SIZE = (112, 28)  # width, height: the VL toy's processor keeps exactly this size
STYLES: tuple[str, ...] = ("jump", "terse", "stepwise", "verbose")
# Style mix of the reference solutions (what the warm-up imitates).
STYLE_WEIGHTS: tuple[float, ...] = (0.10, 0.25, 0.35, 0.30)
MIN_TERMS, MAX_TERMS = 2, 6  # up to 8 terms a 0.8M model stays below 30% accurate
MIN_VALUE, MAX_VALUE = 1, 9


def answer_tag(total: int) -> str:
    return f"<answer>{total}</answer>"


def _terms(nums: list[int]) -> str:
    return "+".join(map(str, nums))


def _prefix_lines(nums: list[int], cuts: list[int]) -> list[str]:
    """One line per cut: the prefix of the problem, the previous total plus the new terms,
    and the new total: cuts [2, 3, 4] of 3+5+2+7 -> ``3+5=8``, ``3+5+2=8+2=10``,
    ``3+5+2+7=10+7=17``.

    Why this shape: each line repeats the previous one and appends the next term(s), so the
    term to add is found by matching the line against the problem (an induction-style copy a
    tiny model learns fast), and the addition itself has both operands right next to the
    result instead of a line away.
    """
    lines, prev = [], 0
    for i, cut in enumerate(cuts):
        head, total = _terms(nums[:cut]), sum(nums[:cut])
        if i == 0:
            lines.append(f"{head}={total}")
        else:
            lines.append(f"{head}={_terms([prev, *nums[cuts[i - 1] : cut]])}={total}")
        prev = total
    return lines


def _terse_cuts(k: int, rng: random.Random) -> list[int]:
    """Merged steps: the first line sums 2-4 terms, later lines add 2-3 more at once."""
    cuts = [min(k, rng.choice((2, 3, 4)))]
    while cuts[-1] < k:
        cuts.append(min(k, cuts[-1] + rng.choice((2, 3))))
    return cuts


def render_solution(nums: list[int], style: str, rng: random.Random) -> str:
    """A reference solution for ``nums`` in ``style``; always ends with the answer tag."""
    total = sum(nums)
    if style == "jump":
        lines: list[str] = []
    elif style == "terse":
        lines = _prefix_lines(nums, _terse_cuts(len(nums), rng))
    elif style == "stepwise":
        lines = _prefix_lines(nums, list(range(2, len(nums) + 1)))
    elif style == "verbose":
        lines = ["add " + _terms(nums),
                 *_prefix_lines(nums, list(range(2, len(nums) + 1))),
                 f"so the sum is {total}"]
    else:
        raise ValueError(f"unknown style {style!r}; styles are {', '.join(STYLES)}")
    return "\n".join([*lines, answer_tag(total)])


def style_of(solution: str) -> str:
    """Classify a (reference or sampled) solution into one of :data:`STYLES`.

    Used to measure accuracy and length by style on the policy's own samples.
    """
    body = solution.split("<answer>", 1)[0]
    if body.startswith("add") or "so the sum" in body:
        return "verbose"
    terms = [ln.split("=", 1)[0].count("+") + 1 for ln in body.splitlines() if "=" in ln]
    # terms per line: 2, 3, 4, ... for stepwise; merged steps skip counts
    if not terms:
        return "jump"
    if terms[0] == 2 and all(b - a == 1 for a, b in zip(terms, terms[1:], strict=False)):
        return "stepwise"
    return "terse"


def _row(rng: random.Random) -> dict[str, str]:
    # Distinct terms: each term then occurs once in the problem, so "which term comes next"
    # is a plain lookup (find the last written term, take the one after it) that a 1M model
    # learns in minutes; with repeats (6+6+...) it needs positional counting and rarely does.
    nums = rng.sample(range(MIN_VALUE, MAX_VALUE + 1), rng.randint(MIN_TERMS, MAX_TERMS))
    style = rng.choices(STYLES, weights=STYLE_WEIGHTS)[0]
    return {
        "problem": _terms(nums),
        "answer": str(sum(nums)),
        "solution": render_solution(nums, style, rng),
    }


def generate_rows(task: str = "add", size: int = 1024, seed: int = 0) -> list[dict[str, Any]]:
    """``size`` rows (``problem``, ``answer``, ``solution``; ``images`` for ``add-vl``),
    deterministic in (task, size, seed).

    Row i does not depend on ``size``: a larger dataset extends a smaller one.
    """
    if task not in TOY_TASKS:
        raise ValueError(f"unknown toy task {task!r}; toy tasks are {', '.join(TOY_TASKS)}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if task == "sums":
        return sum_questions(size, seed)
    if task == "long-sums":
        return long_sums(size, seed)
    if task == "three-sums":
        return long_sums(size, seed, terms=(3, 3))
    # The VL task draws the same problems as the text task (same seed stream).
    rng = random.Random(f"grpo-toy:add:{seed}")  # str seeds hash identically everywhere
    rows = [_row(rng) for _ in range(size)]
    if task == "add-vl":
        rows = [{**row, "problem": "<image>" + row["problem"],
                 "images": [render_problem(row["problem"])]} for row in rows]
    return rows


def sum_questions(size: int, seed: int = 0) -> list[dict[str, Any]]:
    """``What is a + b?`` with one-digit a, b: SmolLM2-135M-Instruct answers ~20-30% of them
    right at temperature 1, in 7 to 128+ tokens (it often rambles on after the sum)."""
    rng = random.Random(f"grpo-toy:sums:{seed}")
    rows = []
    for _ in range(size):
        a, b = rng.randint(MIN_VALUE, MAX_VALUE), rng.randint(MIN_VALUE, MAX_VALUE)
        rows.append({"problem": f"What is {a} + {b}?", "answer": str(a + b)})
    return rows


LONG_MIN_TERMS, LONG_MAX_TERMS = 3, 5
# Style mix of long-sums' worked solutions: each style common enough that the warmed-up model
# still samples it (its shares at step 0 are in docs/reproductions.md), so a cap between two
# styles leaves a group both answers that finish and answers that are cut off.
LONG_STYLE_WEIGHTS: tuple[float, ...] = (0.15, 0.25, 0.35, 0.25)


def render_prose_solution(nums: list[int], style: str) -> str:
    """A worked solution in words for ``nums``; its last number is always the sum, which is
    where ``final_answer_score`` reads the answer (SmolLM2 tokens in brackets, 4 terms):

    - ``jump`` (~7): ``The answer is 18.``
    - ``terse`` (~22): ``3 + 8 + 5 + 2 = 18. The answer is 18.``
    - ``stepwise`` (~36): ``3 + 8 = 11. 11 + 5 = 16. 16 + 2 = 18. The answer is 18.``
    - ``verbose`` (~62): ``We add one number at a time.``, the steps, then ``So the sum of
      3 + 8 + 5 + 2 is 18. The answer is 18.``
    """
    total, terms = sum(nums), " + ".join(map(str, nums))
    if style == "jump":
        return f"The answer is {total}."
    if style == "terse":
        return f"{terms} = {total}. The answer is {total}."
    steps, running = [], nums[0]
    for x in nums[1:]:
        steps.append(f"{running} + {x} = {running + x}.")
        running += x
    if style == "stepwise":
        return f"{' '.join(steps)} The answer is {total}."
    if style == "verbose":
        return (f"We add one number at a time. {' '.join(steps)} So the sum of {terms} is "
                f"{total}. The answer is {total}.")
    raise ValueError(f"unknown style {style!r}; styles are {', '.join(STYLES)}")


def long_sums(size: int, seed: int = 0,
              terms: tuple[int, int] = (LONG_MIN_TERMS, LONG_MAX_TERMS)) -> list[dict[str, Any]]:
    """``What is 3 + 8 + 5 + 2?`` with ``terms`` (min, max) one-digit terms and a worked
    solution each.

    SmolLM2-135M-Instruct gets only 2% of three-term sums right as it ships; warmed up on
    these solutions, a longer (stepwise) answer is more often right than a short one, the
    setting where a small cap takes reasoning away (docs/reproductions.md).
    """
    stream = "long-sums" if terms == (LONG_MIN_TERMS, LONG_MAX_TERMS) else f"sums-{terms}"
    rng = random.Random(f"grpo-toy:{stream}:{seed}")
    rows = []
    for _ in range(size):
        nums = [rng.randint(MIN_VALUE, MAX_VALUE) for _ in range(rng.randint(*terms))]
        style = rng.choices(STYLES, weights=LONG_STYLE_WEIGHTS)[0]
        rows.append({"problem": f"What is {' + '.join(map(str, nums))}?",
                     "answer": str(sum(nums)), "solution": render_prose_solution(nums, style)})
    return rows


def render_problem(text: str) -> bytes:
    """``text`` drawn black on white as a PNG of :data:`IMAGE_SIZE` (Pillow's built-in font)."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", IMAGE_SIZE, "white")
    ImageDraw.Draw(image).text((2, 6), text, fill="black", font=ImageFont.load_default(14))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def export_jsonl(path: str | Path, task: str = "add", size: int = 1000, seed: int = 0) -> Path:
    """Write the task as JSONL (``problem``, ``answer``, ``solution``), like users' datasets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in generate_rows(task, size=size, seed=seed):
            if "images" in row:  # JSON has no bytes: images as base64 data URIs
                row["images"] = ["data:image/png;base64," + base64.b64encode(b).decode()
                                 for b in row["images"]]
            f.write(json.dumps(row) + "\n")
    return path
