"""A real headless Chromium for the tests of the generated web pages (leaderboard/index.html, harness.plot's
plot.html), driven by Playwright: the ``browser`` fixture (tests/conftest.py) and ``open_page``.

Needs the `playwright` Python package and the system Chromium (Debian: `apt-get install -y chromium`, at
/usr/bin/chromium, or set $CHROMIUM); Playwright's own browser download is not used. The fixture skips, saying
which is missing, when either is absent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def open_page(browser, path: Path, width: int = 1280, height: int = 900, ready: str = "canvas"):
    """Open the file ``path`` in a new page, waiting for the selector ``ready``. ``page.problems`` collects every
    console error or warning, uncaught exception and failed request (the page must make none: it works from disk)."""
    problems: list[str] = []
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(10_000)  # a broken script fails fast instead of after Playwright's 30 s
    page.problems = problems
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)  # fmt: skip
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(Path(path).as_uri())
    page.wait_for_selector(ready)
    return page


def chart_data(page, box_id: str) -> dict:
    """The uPlot chart drawn in ``#box_id`` (harness/templates/charts.js keeps each in ``CHARTS``): its series
    labels, its data (x first; a series is null where it has no point), its x-axis label and its width."""
    return page.evaluate(
        "id => { const [chart] = CHARTS.get(document.getElementById(id));"
        " return {labels: chart.series.map(s => s.label), data: chart.data,"
        " xLabel: chart.axes[0].label, width: chart.width}; }",
        box_id,
    )


def points(xs: list, ys: list) -> list[tuple]:
    """(x, y) of one chart series where it has a point."""
    return [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
