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

from grpo_cli.report.aggregate import DEFAULT_WINDOW
from grpo_cli.report.censoring import assumption
from grpo_cli.report.diagnosis import Finding
from grpo_cli.report.load import display_name
from grpo_cli.report.model import ArmComparison, ArmView, Report, RunView
from grpo_cli.report.stats import METHOD, TEST, Estimate, direction
from grpo_cli.report.style import step_span
from grpo_cli.report.summary import COMPARED

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


def _est(e: Estimate, spec: str = ".1f", unit: str = "", share: bool = False) -> str:
    """``mean ± half-width`` (the 95% interval), or the value alone for one seed."""
    if not math.isfinite(e.mean):
        return "–"
    if share:  # shares (0..1) shown as percentages
        m = format(e.mean, ".0%")
        return m if not math.isfinite(e.half) else f"{m} ± {e.half:.0%}"
    m = format(e.mean, spec) + unit
    return m if not math.isfinite(e.half) else f"{m} ± {format(e.half, spec.lstrip('+'))}{unit}"


def _seeds(arm: ArmView) -> str:
    seeds = ", ".join(str(s) for s in arm.summary.seeds)
    return f"{arm.n} ({seeds})" if arm.n > 1 else f"1 (seed {seeds})"


def _steps(arm: ArmView) -> str:
    steps = sorted({v.summary.steps for v in arm.views})
    span = str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"
    return f"{span} (window {arm.summary.mean.window})"


def arm_tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per arm, each headline number as mean ± 95% interval over seeds (two narrow tables)."""
    w = report.window.label
    length_head = ["arm", "seeds (n)", "steps (window)", f"length, first {w} (tokens)",
                   f"length, last {w} (tokens)", "change first → last", f"clip, first {w}",
                   f"clip, last {w}", "natural length, first (tokens)",
                   "natural length, last (tokens)", "cap (tokens)"]
    reward_head = ["arm", "seeds (n)", f"reward, first {w}", f"reward, last {w}",
                   f"accuracy, first {w}", f"accuracy, last {w}",
                   "ρ within groups, first → last (mean)"]
    length_rows, reward_rows = [], []
    for arm in report.arms:
        e, m = arm.summary.estimates, arm.summary.mean
        length_rows.append([
            arm.label, _seeds(arm), _steps(arm), _est(e["len_initial"]), _est(e["len_final"]),
            _est(e["len_change_pct"], "+.0f", "%"), _est(e["clip_early"], share=True),
            _est(e["clip_late"], share=True), _est(e["natural_early"]), _est(e["natural_late"]),
            num(m.cap_late, ".0f")])
        reward_rows.append([
            arm.label, _seeds(arm), _est(e["reward_early"], ".3f"), _est(e["reward_late"], ".3f"),
            _est(e["acc_early"], share=True), _est(e["acc_late"], share=True),
            f"{num(m.corr_within_early, '+.2f')} → {num(m.corr_within_late, '+.2f')}"])
    return [("Length and truncation", length_head, length_rows),
            ("Reward and accuracy", reward_head, reward_rows)]


def summary_tables(report: Report, views: Sequence[RunView] | None = None
                   ) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per run (the per-seed detail): two narrow tables (caption, header, text cells)."""
    w = report.window.label
    length_head = ["run", "steps", f"len first {w} (tokens)", f"len last {w} (tokens)",
                   "change", f"clip first {w}", f"clip last {w}", "natural first (tokens)",
                   "natural last (tokens)", "cap (tokens)", "wall time"]
    reward_head = ["run", f"reward first {w}", f"reward last {w}", f"acc first {w}",
                   f"acc last {w}", "ρ batch first → last", "ρ within groups first → last"]
    length_rows, reward_rows = [], []
    for v in report.views if views is None else views:
        s = v.summary
        name = display_name(v.run)
        change = num(s.len_change_pct, "+.0f") + ("%" if math.isfinite(s.len_change_pct) else "")
        length_rows.append([
            name, f"{s.steps} (window {s.window})", num(s.len_initial), num(s.len_final), change,
            pct(s.clip_early), pct(s.clip_late), num(s.natural_early), num(s.natural_late),
            num(s.cap_late, ".0f"), duration(s.wall_s)])
        reward_rows.append([
            name, num(s.reward_early, ".3f"), num(s.reward_late, ".3f"), pct(s.acc_early),
            pct(s.acc_late),
            f"{num(s.corr_batch_early, '+.2f')} → {num(s.corr_batch_late, '+.2f')}",
            f"{num(s.corr_within_early, '+.2f')} → {num(s.corr_within_late, '+.2f')}"])
    return [("Length and truncation", length_head, length_rows),
            ("Reward and reward-length coupling", reward_head, reward_rows)]


def comparison_tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The headline change per arm with its interval, and the differences between arms; the
    probe's natural length and accuracy the same way where the arms have probe readings."""
    w = report.window.label
    per_arm = [[a.label, str(a.n), *_change_cells(a.summary.estimates["len_change_pct"])]
               for a in report.arms]
    tables = [(f"Length change, first → last {w}, per arm", ["arm", "seeds", "change (mean ± "
               "half-width)", "95% interval", "verdict"], per_arm),
              ("Difference in length change between arms (percentage points)",
               ["comparison", "seeds", "difference", "95% interval (Welch)", "Welch p", "df"],
               [cells[:1] + cells[2:] for cells in  # one measure: no measure column
                (_pair_cells(c) for c in report.comparisons if c.measure == "len_change_pct")])]
    probe = [c for c in report.comparisons if c.measure != "len_change_pct"]
    if not probe:
        return tables
    probe_arm = [[a.label, str(a.n),
                  *_change_cells(a.summary.estimates["natural_change_pct"]),
                  *_change_cells(a.summary.estimates["probe_acc_change"], "")]
                 for a in report.arms]
    return tables + [
        (f"The probe's change, first → last {w} (or the nearest probe), per arm",
         ["arm", "seeds", "natural length change", "95% interval", "verdict",
          "probe accuracy change (points)", "95% interval (points)", "verdict (accuracy)"],
         probe_arm),
        ("Difference in the probe's change between arms (percentage points)",
         ["comparison", "measure", "seeds", "difference", "95% interval (Welch)", "Welch p",
          "df"], [_pair_cells(c) for c in probe])]


def _change_cells(e: Estimate, unit: str = "%") -> list[str]:
    """Mean ± half-width, the interval, and its verdict."""
    return [_est(e, "+.1f", unit), _ci(e, unit), direction(e)]


def _pair_cells(c: ArmComparison) -> list[str]:
    """comparison, measure, seeds, difference, interval, p, df."""
    r = c.result
    return [f"{c.b} − {c.a}", dict(COMPARED)[c.measure], f"{r.n_b} vs {r.n_a}",
            num(r.diff, "+.1f") + (" points" if math.isfinite(r.diff) else ""),
            f"[{r.low:+.1f}, {r.high:+.1f}]" if r.tested else "–",
            _p(r.p) if r.tested else r.reason, num(r.df, ".1f") if r.tested else "–"]


def _ci(e: Estimate, unit: str = "%") -> str:
    if not math.isfinite(e.half):
        return "– (one seed)" if e.n == 1 else "–"
    return f"[{e.low:+.1f}{unit}, {e.high:+.1f}{unit}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _stats_text(report: Report) -> str:
    return (f"Each arm's number is the mean over its seeds of the per-seed window means; ± is "
            f"the half-width of the {METHOD}; no interval with one seed. Differences: {TEST}.")


def cap_rows(view: RunView | ArmView) -> list[list[str]]:
    advice = view.advice
    if advice is None:
        return []
    return [[f"{m:g}× ({cap} tokens)",
             "unknown (beyond the longest observation)" if math.isnan(share) else pct(share, ".1%")]
            for m, cap, share in advice.shares]


def _norm_text(value: Any) -> str:
    return " ".join(str(value or "").split())


def pick_samples(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few distinct samples (by completion text) from the start and the end of training.

    Candidates are taken from the first logged step onwards and from the last logged step
    backwards, so when a step's samples repeat one reply the next distinct replies come from
    the nearest steps; a text is never shown twice.
    """
    dated = [s for s in samples if isinstance(s.get("step"), int)]
    if not dated:
        dated = list(samples)
        order: list[list[dict[str, Any]]] = [dated]
    else:
        by_step = sorted(dated, key=lambda s: s["step"])
        half = len(by_step) // 2 or 1
        order = [by_step[:half], list(reversed(by_step[half:])) or list(reversed(by_step))]
    seen: set[str] = set()
    chosen: list[dict[str, Any]] = []
    for candidates in order:
        taken = []
        for s in candidates:
            key = _norm_text(s.get("completion"))
            if key in seen:
                continue
            seen.add(key)
            taken.append(s)
            if len(taken) == SAMPLES_PER_STEP:
                break
        chosen += sorted(taken, key=lambda s: s.get("step", 0)) if dated else taken
    return chosen


def arm_samples(arm: ArmView) -> list[dict[str, Any]]:
    """Distinct samples of an arm, over its seeds (each tagged with its seed when n > 1)."""
    merged = []
    for v in arm.views:
        for s in v.run.samples:
            merged.append({**s, "_seed": v.run.seed} if arm.n > 1 else s)
    return pick_samples(merged)


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    if len(text) > MAX_SAMPLE_CHARS:
        text = text[:MAX_SAMPLE_CHARS] + f"… [{len(text) - MAX_SAMPLE_CHARS} more characters]"
    return text


def _sample_head(s: dict[str, Any]) -> str:
    parts = [f"step {s.get('step', '?')}"]
    if "_seed" in s:
        parts.insert(0, f"seed={s['_seed']}")
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


def _title(f: Finding) -> str:
    return f"{f.title} — {f.support}" if f.support else f.title


def _finding_html(f: Finding) -> str:
    parts = [f"<div class='finding {_e(f.severity)}'><h4>{_e(_title(f))}</h4>",
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


_MIME = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg"}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{_MIME.get(path.suffix.lower(), 'image/png')};base64,{data}"


def _command(report: Report) -> str:
    extra = f" --window {report.window.cli}" if report.window != DEFAULT_WINDOW else ""
    return f"grpo report {' '.join(report.targets)}{extra}"


def _km_text(v: RunView | ArmView) -> str:
    assert v.km is not None and v.advice is not None
    return (f"{step_span(*v.km.steps).capitalize()}, {v.km.n} completions, "
            f"{v.km.n_censored} truncated; mean length {v.km.naive_mean:.1f} tokens as "
            f"observed vs {v.km.km_mean:.1f} estimated (restricted to the longest "
            "observation).")


def _multi_seed(report: Report) -> bool:
    return any(a.n > 1 for a in report.arms)


def _seed_lines(arm: ArmView) -> list[str]:
    """Per seed: its findings in one line (the arm's diagnosis is above)."""
    return [f"{display_name(v.run)}: " + "; ".join(_title(f) for f in v.findings)
            for v in arm.views]


def render_html(report: Report, out: Path) -> str:
    """The whole page; figures are read from ``out`` and embedded."""
    p: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(report.title)}</h1>",
        f"<p class='note'>Generated {_e(report.generated)} by <code>{_e(_command(report))}"
        f"</code> · {len(report.views)} run(s) in {len(report.arms)} arm(s) · windows: "
        f"first / last {_e(report.window.label)} · smoothing: "
        f"{_e(_smoothing_text(report))}</p>",
    ]
    if report.notes or any(v.run.notes for v in report.views):
        p.append("<h2>Data notes</h2><ul>")
        p += [f"<li>{_e(n)}</li>" for n in report.notes]
        p += [f"<li>{_e(v.run.label)}: {_e(n)}</li>" for v in report.views for n in v.run.notes]
        p.append("</ul>")
    if report.comparisons:
        p.append("<h2>Between-arm comparison</h2>")
        p.append(f"<p class='note'>{_e(_stats_text(report))}</p>")
        for caption, head, rows in comparison_tables(report):
            p.append(f"<h4>{_e(caption)}</h4>")
            p.append(_table_html(head, rows))
    p.append("<h2>Diagnosis</h2>")
    for arm in report.arms:
        if len(report.arms) > 1 or arm.n > 1:
            p.append(f"<h3>{_e(arm.label)}</h3>")
        p += [_finding_html(f) for f in arm.findings]
    p.append("<h2>Summary</h2>")
    p.append(f"<p class='note'>{_e(_window_text(report))}</p>")
    for caption, head, rows in arm_tables(report):
        p.append(f"<h4>{_e(caption)}</h4>")
        p.append(_table_html(head, rows))
    if _multi_seed(report):
        p.append("<details><summary>Per-seed detail (every run's numbers and findings)"
                 "</summary>")
        for caption, head, rows in summary_tables(report):
            p.append(f"<h4>{_e(caption)}</h4>")
            p.append(_table_html(head, rows))
        p.append("<h4>Findings per seed</h4><ul>")
        p += [f"<li>{_e(line)}</li>" for arm in report.arms for line in _seed_lines(arm)]
        p.append("</ul></details>")
    p.append("<h2>Length without the cap (censoring-aware estimate)</h2>")
    p.append(f"<p class='note'>{_e(assumption(report.window.label, _multi_seed(report)))}</p>")
    for arm in report.arms:
        p.append(f"<h3>{_e(arm.label)}</h3>")
        if arm.km is None or arm.advice is None:
            p.append(f"<p>No estimate: {_e(arm.km_note or 'no rollout rows')}.</p>")
            continue
        p.append(f"<p><b>{_e(arm.advice.message)}</b>. {_e(_km_text(arm))}</p>")
        p.append(_table_html(["cap", "share of completions it would truncate"], cap_rows(arm)))
    p.append("<h2>Figures</h2>")
    for fig in report.figures:
        p.append(f"<figure><img src='{_img(out / fig.filename)}' alt='{_e(fig.title)}'>"
                 f"<figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)} "
                 f"(<a href='{_e(fig.filename)}'>{_e(fig.filename)}</a>)</figcaption></figure>")
    p.append("<h2>Sample completions</h2>")
    for arm in report.arms:
        picked = arm_samples(arm)
        p.append(f"<h3>{_e(arm.label)}</h3>")
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


def _window_text(report: Report) -> str:
    how = ("mean over seeds ± the half-width of a 95% t interval (no interval with one seed)"
           if _multi_seed(report) else "one seed per arm: no interval")
    return (f"First / last = mean over the first / last {report.window.label} (at least one "
            "step; the window size is shown next to the step count; `--window` sets it). "
            f"Per arm: {how}. Natural length: the val/ probe (fixed prompts at a generous "
            "cap) over the window's steps, else its first / last reading. ρ: mean Spearman "
            "correlation of reward and length within prompt groups.")


# --- Markdown -----------------------------------------------------------------------------

_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(value: Any) -> str:
    """Plain text for Markdown: only a ``<`` that could open an HTML tag is escaped."""
    return _TAG_START.sub(r"\\<", str(value)).replace("\n", " ")


def _md_cell(value: Any) -> str:
    return _md_text(value).replace("|", "\\|")


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


def _md_findings(findings: list[Finding]) -> list[str]:
    md = []
    for f in findings:
        md.append(f"- **{_md_text(_title(f))}**: {_md_text(f.message)}")
        if f.evidence:
            lead = "triggered by" if f.severity == "warning" else "numbers"
            md.append(f"  - {lead}: {_md_text('; '.join(f.evidence))}")
        for r in f.remedies:
            md.append(f"  - remedy: `{r.override}` — {_md_text(r.why)}")
    return md


def render_markdown(report: Report) -> str:
    md: list[str] = [f"# {_md_text(report.title)}", "",
                     f"Generated {report.generated} by `{_command(report)}`; "
                     f"{len(report.views)} run(s) in {len(report.arms)} arm(s); windows: "
                     f"first / last {report.window.label}; smoothing: "
                     f"{_smoothing_text(report)}.", ""]
    notes = report.notes + [f"{v.run.label}: {n}" for v in report.views for n in v.run.notes]
    if notes:
        md += ["## Data notes", ""] + [f"- {_md_text(n)}" for n in notes] + [""]
    if report.comparisons:
        md += ["## Between-arm comparison", "", _md_text(_stats_text(report)), ""]
        for caption, head, rows in comparison_tables(report):
            md += [f"**{_md_text(caption)}**", "", _md_table(head, rows), ""]
    md += ["## Diagnosis", ""]
    for arm in report.arms:
        if len(report.arms) > 1 or arm.n > 1:
            md += [f"### {_md_text(arm.label)}", ""]
        md += _md_findings(arm.findings) + [""]
    md += ["## Summary", "", _md_text(_window_text(report)), ""]
    for caption, head, rows in arm_tables(report):
        md += [f"**{_md_text(caption)}**", "", _md_table(head, rows), ""]
    md += ["## Length without the cap (censoring-aware estimate)", "",
           _md_text(assumption(report.window.label, _multi_seed(report))), ""]
    for arm in report.arms:
        md += [f"### {_md_text(arm.label)}", ""]
        if arm.km is None or arm.advice is None:
            md += [f"No estimate: {_md_text(arm.km_note or 'no rollout rows')}.", ""]
            continue
        md += [f"**{_md_text(arm.advice.message)}**. {_md_text(_km_text(arm))}", "",
               _md_table(["cap", "share of completions it would truncate"], cap_rows(arm)), ""]
    md += ["## Figures", ""]
    for fig in report.figures:
        md += [f"![{_md_text(fig.title)}]({fig.filename})", "",
               f"*{_md_text(fig.title)}.* {_md_text(fig.caption)}", ""]
    md += ["## Sample completions", ""]
    for arm in report.arms:
        picked = arm_samples(arm)
        md += [f"### {_md_text(arm.label)}", ""]
        if not picked:
            md += ["No samples recorded (samples.jsonl).", ""]
        for s in picked:
            md += [f"{_md_text(_sample_head(s))}", "", "Prompt:", "",
                   fence(_text(s.get("prompt"))), "", "Completion:", "",
                   fence(_text(s.get("completion"))), ""]
    if _multi_seed(report):
        md += ["## Per-seed detail", ""]
        for caption, head, rows in summary_tables(report):
            md += [f"**{_md_text(caption)}**", "", _md_table(head, rows), ""]
        md += ["**Findings per seed**", ""]
        md += [f"- {_md_text(line)}" for arm in report.arms for line in _seed_lines(arm)]
        md.append("")
    return "\n".join(md)
