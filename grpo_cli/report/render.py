"""report.html (self-contained: CSS inline, figures as base64) and report.md (for PRs).

Model text (prompts, completions) is data, never markup: in HTML it goes through
``html.escape`` inside ``<pre>``; in Markdown it goes in a code fence longer than any run of
backticks in the text, so a completion holding ``<script>`` or a fence shows as text.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grpo_cli.report.censoring import ASSUMPTION
from grpo_cli.report.diagnosis import Finding
from grpo_cli.report.load import display_name
from grpo_cli.report.model import Report, RunView

MAX_SAMPLE_CHARS = 2000  # long completions are cut in the report (the file has them whole)
SAMPLES_PER_STEP = 3

# --- formatting ---------------------------------------------------------------------------


def num(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, spec)


def pct(x: float | None, spec: str = ".0%") -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def summary_tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The summary as two narrow tables (caption, header, text cells), shared by HTML and MD."""
    length_head = ["run", "steps", "initial len (tokens)", "final len (tokens)", "change",
                   "clip early", "clip late", "cap (tokens)", "wall time"]
    reward_head = ["run", "reward early", "reward late", "acc early", "acc late",
                   "ρ batch early → late", "ρ within groups early → late"]
    length_rows, reward_rows = [], []
    for v in report.views:
        s = v.summary
        name = display_name(v.run)
        change = num(s.len_change_pct, "+.0f") + ("%" if math.isfinite(s.len_change_pct) else "")
        length_rows.append([
            name, f"{s.steps} (window {s.window})", num(s.len_initial), num(s.len_final), change,
            pct(s.clip_early), pct(s.clip_late), num(s.cap_late, ".0f"), duration(s.wall_s)])
        reward_rows.append([
            name, num(s.reward_early, ".3f"), num(s.reward_late, ".3f"), pct(s.acc_early),
            pct(s.acc_late),
            f"{num(s.corr_batch_early, '+.2f')} → {num(s.corr_batch_late, '+.2f')}",
            f"{num(s.corr_within_early, '+.2f')} → {num(s.corr_within_late, '+.2f')}"])
    return [("Length and truncation", length_head, length_rows),
            ("Reward and reward-length coupling", reward_head, reward_rows)]


def cap_rows(view: RunView) -> list[list[str]]:
    advice = view.advice
    if advice is None:
        return []
    return [[f"{m:g}× ({cap} tokens)",
             "unknown (beyond the longest observation)" if math.isnan(share) else pct(share, ".1%")]
            for m, cap, share in advice.shares]


def pick_samples(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few samples from the first and the last logged step."""
    steps = sorted({s.get("step") for s in samples if isinstance(s.get("step"), int)})
    if not steps:
        return list(samples[:SAMPLES_PER_STEP])
    chosen = []
    for step in dict.fromkeys([steps[0], steps[-1]]):
        chosen += [s for s in samples if s.get("step") == step][:SAMPLES_PER_STEP]
    return chosen


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_SAMPLE_CHARS:
        text = text[:MAX_SAMPLE_CHARS] + f"… [{len(text) - MAX_SAMPLE_CHARS} more characters]"
    return text


def _sample_head(s: dict[str, Any]) -> str:
    parts = [f"step {s.get('step', '?')}"]
    if "length" in s:
        parts.append(f"{s['length']} tokens")
    if s.get("truncated"):
        parts.append("truncated")
    if isinstance(s.get("reward"), (int, float)):
        parts.append(f"reward {s['reward']:.2f}")
    return ", ".join(parts)


# --- HTML ---------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;vertical-align:top;
white-space:nowrap}td:first-child{white-space:normal;min-width:14em}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.finding{border-left:5px solid #d9822b;background:#fdf6ee;padding:.5em 1em;margin:.6em 0}
.finding.ok{border-color:#3a9d5d;background:#eff8f2}
.finding.info{border-color:#5b8dd6;background:#eff4fb}
.finding h4{margin:.1em 0 .3em}.finding ul{margin:.2em 0}
code{background:#f0f0f0;padding:0 .25em;border-radius:3px}
pre{background:#f7f7f7;border:1px solid #e2e2e2;padding:.5em;white-space:pre-wrap;
word-break:break-word;font-size:.85em;max-height:20em;overflow:auto}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.note{color:#555;font-size:.9em}
.scroll{overflow-x:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table_html(head: list[str], rows: list[list[str]]) -> str:
    out = ["<div class='scroll'><table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def _finding_html(f: Finding) -> str:
    parts = [f"<div class='finding {_e(f.severity)}'><h4>{_e(f.title)}</h4>",
             f"<p>{_e(f.message)}</p>"]
    if f.evidence:
        lead = "Triggered by" if f.severity == "warning" else "Numbers"
        parts.append(f"<p class='note'>{lead}: " + "; ".join(_e(x) for x in f.evidence)
                     + "</p>")
    if f.remedies:
        parts.append("<p>Remedies:</p><ul>" + "".join(
            f"<li><code>{_e(r.override)}</code> — {_e(r.why)}</li>" for r in f.remedies)
            + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def render_html(report: Report, out: Path) -> str:
    """The whole page; figures are read from ``out`` and embedded."""
    p: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(report.title)}</h1>",
        f"<p class='note'>Generated {_e(report.generated)} by <code>grpo report "
        f"{_e(' '.join(report.targets))}</code> · {len(report.views)} run(s) · smoothing: "
        f"{_e(_smoothing_text(report))}</p>",
    ]
    if report.notes or any(v.run.notes for v in report.views):
        p.append("<h2>Data notes</h2><ul>")
        p += [f"<li>{_e(n)}</li>" for n in report.notes]
        p += [f"<li>{_e(v.run.label)}: {_e(n)}</li>" for v in report.views for n in v.run.notes]
        p.append("</ul>")
    p.append("<h2>Diagnosis</h2>")
    for v in report.views:
        if len(report.views) > 1:
            p.append(f"<h3>{_e(display_name(v.run))}</h3>")
        p += [_finding_html(f) for f in v.findings]
    p.append("<h2>Summary</h2>")
    p.append(f"<p class='note'>{_e(_window_text())}</p>")
    for caption, head, rows in summary_tables(report):
        p.append(f"<h4>{_e(caption)}</h4>")
        p.append(_table_html(head, rows))
    p.append("<h2>Length without the cap (censoring-aware estimate)</h2>")
    p.append(f"<p class='note'>{_e(ASSUMPTION)}</p>")
    for v in report.views:
        p.append(f"<h3>{_e(display_name(v.run))}</h3>")
        if v.km is None or v.advice is None:
            p.append(f"<p>No estimate: {_e(v.km_note or 'no rollout rows')}.</p>")
            continue
        p.append(f"<p><b>{_e(v.advice.message)}</b>. Steps {v.km.steps[0]}–{v.km.steps[1]}, "
                 f"{v.km.n} completions, {v.km.n_censored} truncated; mean length "
                 f"{v.km.naive_mean:.1f} tokens as observed vs {v.km.km_mean:.1f} estimated "
                 "(restricted to the longest observation).</p>")
        p.append(_table_html(["cap", "share of completions it would truncate"], cap_rows(v)))
    p.append("<h2>Figures</h2>")
    for fig in report.figures:
        p.append(f"<figure><img src='{_img(out / fig.filename)}' alt='{_e(fig.title)}'>"
                 f"<figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)} "
                 f"(<a href='{_e(fig.filename)}'>{_e(fig.filename)}</a>)</figcaption></figure>")
    p.append("<h2>Sample completions</h2>")
    for v in report.views:
        picked = pick_samples(v.run.samples)
        p.append(f"<h3>{_e(display_name(v.run))}</h3>")
        if not picked:
            p.append("<p class='note'>No samples recorded (samples.jsonl).</p>")
        for i, s in enumerate(picked):
            p.append(f"<details{' open' if i == 0 else ''}><summary>{_e(_sample_head(s))}"
                     "</summary>"
                     f"<p>Prompt:</p><pre>{_e(_text(s.get('prompt')))}</pre>"
                     f"<p>Completion:</p><pre>{_e(_text(s.get('completion')))}</pre></details>")
    p.append("</body></html>")
    return "\n".join(p)


def _smoothing_text(report: Report) -> str:
    w = report.smoothing
    return (f"raw per-step values drawn faintly, lines are centred rolling means over {w} steps"
            if w > 1 else "none (too few steps)")


def _window_text() -> str:
    return ("Early / late = mean over the first / last 10% of steps (at least one step; the "
            "window size is shown next to the step count). ρ: Spearman correlation of reward "
            "and length over the batch, and the mean within prompt groups.")


# --- Markdown -----------------------------------------------------------------------------


def _md_cell(value: Any) -> str:
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in head) + " |",
             "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fence(text: str) -> str:
    """A code block no content can close early: the fence outnumbers any backtick run."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    bar = "`" * max(3, longest + 1)
    return f"{bar}text\n{text}\n{bar}"


def render_markdown(report: Report) -> str:
    md: list[str] = [f"# {_md_cell(report.title)}", "",
                     f"Generated {report.generated} by `grpo report "
                     f"{' '.join(report.targets)}`; smoothing: {_smoothing_text(report)}.", ""]
    notes = report.notes + [f"{v.run.label}: {n}" for v in report.views for n in v.run.notes]
    if notes:
        md += ["## Data notes", ""] + [f"- {_md_cell(n)}" for n in notes] + [""]
    md += ["## Diagnosis", ""]
    for v in report.views:
        if len(report.views) > 1:
            md += [f"### {_md_cell(display_name(v.run))}", ""]
        for f in v.findings:
            md.append(f"- **{_md_cell(f.title)}**: {_md_cell(f.message)}")
            if f.evidence:
                lead = "triggered by" if f.severity == "warning" else "numbers"
                md.append(f"  - {lead}: {_md_cell('; '.join(f.evidence))}")
            for r in f.remedies:
                md.append(f"  - remedy: `{r.override}` — {_md_cell(r.why)}")
        md.append("")
    md += ["## Summary", "", _window_text(), ""]
    for caption, head, rows in summary_tables(report):
        md += [f"**{caption}**", "", _md_table(head, rows), ""]
    md += ["## Length without the cap (censoring-aware estimate)", "", ASSUMPTION, ""]
    for v in report.views:
        md += [f"### {_md_cell(display_name(v.run))}", ""]
        if v.km is None or v.advice is None:
            md += [f"No estimate: {_md_cell(v.km_note or 'no rollout rows')}.", ""]
            continue
        md += [f"**{_md_cell(v.advice.message)}**. Steps {v.km.steps[0]}–{v.km.steps[1]}, "
               f"{v.km.n} completions, {v.km.n_censored} truncated; mean length "
               f"{v.km.naive_mean:.1f} tokens as observed vs {v.km.km_mean:.1f} estimated.", "",
               _md_table(["cap", "share of completions it would truncate"], cap_rows(v)), ""]
    md += ["## Figures", ""]
    for fig in report.figures:
        md += [f"![{_md_cell(fig.title)}]({fig.filename})", "",
               f"*{_md_cell(fig.title)}.* {_md_cell(fig.caption)}", ""]
    md += ["## Sample completions", ""]
    for v in report.views:
        picked = pick_samples(v.run.samples)
        md += [f"### {_md_cell(display_name(v.run))}", ""]
        if not picked:
            md += ["No samples recorded (samples.jsonl).", ""]
        for s in picked:
            md += [f"{_md_cell(_sample_head(s))}", "", "Prompt:", "",
                   fence(_text(s.get("prompt"))), "", "Completion:", "",
                   fence(_text(s.get("completion"))), ""]
    return "\n".join(md)
