"""The config key reference, built from the typed schema and its comments.

The documentation's key table is generated from here, so a key added to
:mod:`grpo_cli.config.schema` with a comment is documented without copying it anywhere. The
default shown is what ``grpo run`` composes (``conf/`` over the schema), not the dataclass's.
Torch-free: the docs build imports it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
from dataclasses import dataclass
from typing import Any, get_type_hints

from grpo_cli.config import schema
from grpo_cli.config.keys import ALIASES, SHORT_NAMES
from grpo_cli.config.schema import RunConfig


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, e.g. trainer.lr
    type: str  # as annotated, e.g. "int | None"
    default: Any  # the composed default of `grpo run`
    doc: str  # the schema's comment for the field ("" when it has none)


@dataclass(frozen=True)
class SectionDoc:
    key: str  # e.g. length.cosine
    doc: str  # the section dataclass's docstring ("" when none)


def _comments() -> dict[int, str]:
    """Line number -> comment text of every ``#`` comment in schema.py."""
    src = inspect.getsource(schema)
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _field_docs() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment block above the field plus its trailing one."""
    src = inspect.getsource(schema)
    lines = src.splitlines()
    comments = _comments()
    docs: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above: list[str] = []
            line = stmt.lineno - 1  # 1-based line just above the field
            while line in comments and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            trailing = comments.get(stmt.lineno, "")
            docs[(node.name, stmt.target.id)] = " ".join([*above, trailing]).strip()
    return docs


def _composed_defaults() -> dict[str, Any]:
    """The config `grpo run` composes with no overrides (conf/ merged over the schema)."""
    from grpo_cli.config.loader import compose, to_run_config

    return dataclasses.asdict(to_run_config(compose([])))


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _docstring(cls: type) -> str:
    """The class's own docstring; dataclasses without one get a generated signature, dropped."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(inspect.cleandoc(doc).split())


def reference() -> tuple[list[SectionDoc], list[KeyDoc]]:
    """Every section and leaf key of :class:`RunConfig`, in declaration order."""
    docs = _field_docs()
    defaults = _composed_defaults()
    sections: list[SectionDoc] = []
    keys: list[KeyDoc] = []

    def walk(cls: type, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            hint = hints[f.name]
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                sections.append(SectionDoc(key, _docstring(hint)))
                walk(hint, key + ".")
            else:
                keys.append(KeyDoc(key, str(f.type), _lookup(defaults, key),
                                   docs.get((cls.__name__, f.name), "")))

    walk(RunConfig, "")
    return sections, keys


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    import json

    return "null" if value is None else json.dumps(value) if not isinstance(value, str) \
        else value


def markdown_tables() -> str:
    """One Markdown table per top-level group, then the aliases other frameworks' names map to."""
    sections, keys = reference()
    section_doc = {s.key: s.doc for s in sections}
    short = SHORT_NAMES  # key -> the short name it prints and accepts
    out: list[str] = []
    groups: list[str] = []
    for k in keys:
        group = k.key.split(".")[0] if "." in k.key else "(top level)"
        if group not in groups:
            groups.append(group)
    for group in groups:
        out.append(f"### `{group}`\n" if group != "(top level)" else "### Top level\n")
        if section_doc.get(group):
            out.append(section_doc[group] + "\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        introduced: set[str] = set()  # subsections whose docstring has been shown
        for k in keys:
            if (k.key.split(".")[0] if "." in k.key else "(top level)") != group:
                continue
            doc = k.doc
            sub = k.key.rsplit(".", 1)[0]
            if sub != group and section_doc.get(sub) and sub not in introduced:
                introduced.add(sub)  # length.cosine's first key carries the method's name
                doc = f"{section_doc[sub]} {doc}".strip()
            alias = f" (alias `{short[k.key]}`)" if k.key in short else ""
            out.append(f"| `{k.key}`{alias} | `{_cell(k.type)}` | `{_cell(_value(k.default))}` "
                       f"| {_cell(doc)} |")
        out.append("")
    out.append("### Other frameworks' names\n")
    out.append("These keys are rewritten to the key on the right (EasyR1, veRL and TRL "
               "spellings), so a config copied from those projects runs.\n")
    out.append("| written | means |\n|---|---|")
    for written, means in sorted(ALIASES.items()):
        out.append(f"| `{written}` | `{means}` |")
    return "\n".join(out) + "\n"
