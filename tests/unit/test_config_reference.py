"""The generated key reference of the docs (grpo_cli/config/reference.py): every key of the
schema, with the default `grpo run` composes and the schema's comment."""

from __future__ import annotations

import dataclasses

from grpo_cli.config.keys import ALIASES, config_keys
from grpo_cli.config.reference import markdown_tables, reference


def test_every_leaf_key_is_documented_once_with_a_meaning() -> None:
    sections, keys = reference()
    names = [k.key for k in keys]
    assert len(names) == len(set(names))
    assert set(names) | {s.key for s in sections} == config_keys()
    undocumented = [k.key for k in keys if not k.doc]
    assert not undocumented, f"add a comment in grpo_cli/config/schema.py for {undocumented}"


def test_defaults_are_what_grpo_run_composes() -> None:
    from grpo_cli.config.loader import compose, to_run_config

    composed = dataclasses.asdict(to_run_config(compose(["algorithm=dapo"])))
    _, keys = reference()
    for k in keys:
        node: object = dataclasses.asdict(to_run_config(compose([])))
        for part in k.key.split("."):
            node = node[part]  # type: ignore[index]
        assert k.default == node, k.key
    # the reference is the plain `grpo run`, not a group option's values
    assert {k.key: k.default for k in keys}["algorithm.loss_agg_mode"] != (
        composed["algorithm"]["loss_agg_mode"])


def test_comments_follow_their_field() -> None:
    """A comment block above a field and a trailing comment are both the field's; a
    comment above one field is not given to the next."""
    _, keys = reference()
    doc = {k.key: k.doc for k in keys}
    assert doc["data.max_response_length"].startswith("alias: max_len")
    assert "generous cap" not in doc["val.max_len"] or "4x" in doc["val.max_len"]
    assert doc["algorithm.dynamic_sampling"].startswith("DAPO dynamic sampling")
    assert not doc["algorithm.dynamic_sampling_key"].startswith("DAPO dynamic sampling")


def test_markdown_has_a_row_per_key_and_the_aliases() -> None:
    text = markdown_tables()
    _, keys = reference()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for k in keys:
        assert sum(row.startswith(f"| `{k.key}` ") for row in rows) == 1, k.key
    for written, means in ALIASES.items():
        assert f"| `{written}` | `{means}` |" in text
    assert "| `data.max_response_length` (alias `max_len`) |" in text
