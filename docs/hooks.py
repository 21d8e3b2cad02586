"""MkDocs hook: fills the generated tables into the pages that ask for them.

A page writes a marker on a line of its own; the hook replaces it with Markdown built from
the code, so the site cannot drift from the schema or the metric list:

- ``<!-- grpo:config-keys -->``: every config key, its type, default and meaning
  (grpo_cli/config/reference.py, from grpo_cli/config/schema.py and conf/).
- ``<!-- grpo:metrics -->``: every metric name, what it measures and when it is logged
  (grpo_cli/telemetry/catalog.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _config_keys() -> str:
    from grpo_cli.config.reference import markdown_tables

    return markdown_tables()


def _metrics() -> str:
    from grpo_cli.telemetry.catalog import markdown_table

    return markdown_table()


GENERATED: dict[str, Callable[[], str]] = {
    "<!-- grpo:config-keys -->": _config_keys,
    "<!-- grpo:metrics -->": _metrics,
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    for marker, build in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, build())
    return markdown
