"""`report.html` opened the way a reader opens it: in headless Chromium, driven through
Selenium and Debian's chromedriver. Every image and inline SVG must load with a non-zero size,
the console must stay free of errors, every table of report.md must be on the page, and a
screenshot is written.

Chromium comes from the system's packages (`apt-get install chromium chromium-driver`);
without it the test skips and says so, except where GRPO_REQUIRE_BROWSER=1 (CI), where it
fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from grpo_cli.report.synthetic import write_synthetic_run
from tests.helpers import run_grpo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _browser_or_skip() -> None:
    if CHROMIUM and DRIVER:
        return
    why = ("Chromium or its driver is not installed (apt-get install chromium "
           "chromium-driver)")
    if os.environ.get("GRPO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why}, and GRPO_REQUIRE_BROWSER=1 requires it")
    pytest.skip(why)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2-arm x 2-seed sweep of synthetic stores (a collapse at cap 48, a healthy run at
    cap 64) with its manifest, as `grpo sweep` leaves it."""
    root = tmp_path_factory.mktemp("runs")
    sweep_id = "sweep-browser"
    arms = []
    for i, (pattern, seed) in enumerate([(p, s) for p in ("collapse", "healthy")
                                         for s in (0, 1)]):
        run_id = f"{sweep_id}-{i:03d}"
        write_synthetic_run(root, run_id, pattern, steps=30, seed=seed)
        arms.append({"index": i, "overrides": [f"pattern={pattern}", f"seed={seed}"],
                     "run_id": run_id, "status": "completed"})
    folder = root / "sweeps" / sweep_id
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"sweep_id": sweep_id, "arms": arms}))
    return root, sweep_id


def open_report(html: Path, shot: Path) -> dict:
    """What a reader's browser shows of ``html``: images, SVGs, tables, console errors; a
    full-width screenshot to ``shot``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2400",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        driver.get(html.as_uri())
        page = driver.execute_script("""
            const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
            return {
              images: Array.from(document.images).map(i => ({
                  complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                  shown: box(i), src: i.src.slice(0, 30)})),
              tables: document.querySelectorAll('table').length,
              title: document.title,
            };""")
        page["errors"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    return page


def markdown_tables(md: str) -> int:
    """Tables in report.md: one header separator line each."""
    return sum(1 for line in md.splitlines() if line.startswith("|---"))


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_report_renders_in_chromium(sweep: tuple[Path, str], tmp_path: Path, fmt: str) -> None:
    _browser_or_skip()
    root, sweep_id = sweep
    out = tmp_path / "report"
    res = run_grpo(root, "report", sweep_id, "--out", str(out), "--format", fmt)
    assert res.returncode == 0, res.stderr[-3000:]
    page = open_report(out / "report.html", tmp_path / "shot.png")

    assert not page["errors"], page["errors"]
    figures = len(list(out.glob(f"*.{fmt}")))
    assert figures >= 8
    assert len(page["images"]) == figures  # every figure file is on the page, embedded
    mime = {"png": "data:image/png", "svg": "data:image/svg+xml"}[fmt]
    for img in page["images"]:
        assert img["src"].startswith(mime), img
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
        assert img["shown"][0] > 0 and img["shown"][1] > 0, img
    assert page["tables"] == markdown_tables((out / "report.md").read_text())
    assert page["tables"] >= 3
    assert sweep_id in page["title"]
    shot = (tmp_path / "shot.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
