"""Math rewards graded with math-verify, EasyR1's batch convention.

``compute_score`` (the default): the answer is the content of the last ``<answer>...</answer>``
tag, or else the last ``\\boxed{...}``. ``format`` is 1 when such an answer is present.
``overall`` mixes them as ``(1 - format_weight) * accuracy + format_weight * format`` like
EasyR1's math reward.

``final_answer_score``: for chat models that answer in prose ("3 + 5 equals 8."): the answer
is a ``\\boxed{}`` if there is one, else the last number literal written, and math-verify
checks it. So a reply that rambles on to other numbers is graded by where it ended, and
restating the problem is not an answer: math-verify's own extraction from the whole text
reads "6 + 7 equals two." as the expression 6 + 7 = 13, which a pilot run learned to exploit.
A response the cap cut off has not ended and scores 0, as a truncated chain of thought earns
nothing when its answer comes last (another pilot learned to state the sum, then ramble into
the cap for full reward).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, honouring nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return text[i:j]
            depth -= 1
    return None


def extract_answer(response: str) -> str | None:
    tags = _ANSWER_TAG.findall(response)
    if tags:
        return tags[-1].strip()
    return extract_boxed(response)


@lru_cache(maxsize=65536)
def is_equivalent(prediction: str, ground_truth: str) -> bool:
    """math-verify equivalence, cached: toy answers repeat, and parsing costs ~2 ms."""
    from math_verify import parse, verify

    if prediction.strip() == ground_truth.strip():
        return True
    gold = parse(f"${ground_truth}$") or parse(ground_truth)
    pred = parse(f"${prediction}$") or parse(prediction)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred))


def compute_score(reward_inputs: list[dict[str, Any]], format_weight: float = 0.0) -> list[dict]:
    """Score a batch: ``overall``, ``accuracy`` and ``format`` per completion."""
    scores = []
    for item in reward_inputs:
        answer = extract_answer(item["response"])
        fmt = 0.0 if answer is None else 1.0
        acc = 0.0
        if answer is not None and is_equivalent(answer, str(item["ground_truth"])):
            acc = 1.0
        overall = (1.0 - format_weight) * acc + format_weight * fmt
        scores.append({"overall": overall, "accuracy": acc, "format": fmt})
    return scores


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(response: str) -> str | None:
    """The last ``\\boxed{}`` content, else the last number literal (commas dropped)."""
    boxed = extract_boxed(response)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(response.replace(",", ""))
    return numbers[-1] if numbers else None


def final_answer_score(reward_inputs: list[dict[str, Any]]) -> list[dict]:
    """Score a batch by the final answer of each finished response (see above)."""
    scores = []
    for item in reward_inputs:
        answer = None if item.get("truncated", False) else final_answer(item["response"])
        acc = float(answer is not None and is_equivalent(answer, str(item["ground_truth"])))
        scores.append({"overall": acc, "accuracy": acc})
    return scores
