"""The figures' paper style and output formats.

Every figure is drawn at a journal's column widths (3.4 in single column, 7 in across the
page) with 7.5-9 pt text, so it goes into a paper at 100% without rescaling: the text stays
8-9 pt as printed. PNG is written at 200 dpi (crisp in the HTML page), SVG keeps text as text
and PDF embeds TrueType fonts (editable, accepted by publishers); heat-map cells are
rasterised inside SVG/PDF so a 2,000-step heat map stays small.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from grpo_cli.errors import ConfigError

if TYPE_CHECKING:  # matplotlib is imported by figures.py, not here: --format is checked first
    import matplotlib.pyplot as plt

FORMATS = ("png", "svg", "pdf")
COLUMN = 3.4  # in: one column of a two-column paper
PAGE = 7.0  # in: across both columns
HEIGHT = 2.5  # in: one row of axes
PNG_DPI = 200
MIME = {"png": "image/png", "svg": "image/svg+xml"}

STYLE = {
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 8.0,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "figure.titlesize": 9.0,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "lines.linewidth": 1.3,
    "lines.markersize": 2.5,
    "grid.linewidth": 0.4,
    "legend.handlelength": 1.8,
    "legend.borderaxespad": 0.3,
    "legend.columnspacing": 1.2,
    "axes.titlepad": 4.0,
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
    "ps.fonttype": 42,
    "svg.fonttype": "none",  # text as <text>, not outlines
    "svg.hashsalt": "grpo-report",  # stable ids: the same figure gives the same file
}


def parse_formats(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"svg,pdf"`` (or a list) -> ``("svg", "pdf")``; default ``("png",)``. Unknown
    formats are a :class:`ConfigError` naming the valid ones."""
    if spec is None:
        return ("png",)
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    out = tuple(dict.fromkeys(p.strip().lower().lstrip(".") for p in parts if p.strip()))
    bad = [p for p in out if p not in FORMATS]
    if bad or not out:
        raise ConfigError(f"--format {','.join(bad) or spec!r}: expected one or more of "
                          f"{', '.join(FORMATS)}, comma-separated (e.g. --format svg,pdf)")
    return out


def page_format(formats: Iterable[str]) -> str:
    """What report.html embeds: SVG when chosen, else PNG (written for the page even when
    only PDF is asked for: browsers do not show a PDF as an image)."""
    return "svg" if "svg" in formats else "png"


def save(fig: plt.Figure, stem: Path, formats: Iterable[str]) -> list[Path]:
    """Write ``stem.<fmt>`` for each format; closes the figure."""
    import matplotlib.pyplot as plt

    out = []
    try:
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            fig.savefig(path, format=fmt, dpi=PNG_DPI if fmt == "png" else None,
                        bbox_inches="tight", metadata=_metadata(fmt))
            out.append(path)
    finally:
        plt.close(fig)
    return out


def _metadata(fmt: str) -> dict[str, str | None]:
    """No creation date in SVG/PDF: the same data gives byte-identical files."""
    if fmt == "pdf":
        return {"CreationDate": None, "Creator": "grpo report"}
    if fmt == "svg":
        return {"Date": None, "Creator": "grpo report"}
    return {"Software": "grpo report"}


def step_span(first: int, last: int) -> str:
    """"step 4" for a one-step window, "steps 3–9" otherwise (never "steps 4–4")."""
    return f"step {first}" if first == last else f"steps {first}–{last}"
