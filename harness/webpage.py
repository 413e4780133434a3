"""Self-contained web pages: one HTML file that opens from disk, with no server and no network.

    html = fill(template, {"TITLE": escape(title), "DATA": script_json(data), "CHARTS": CHARTS_JS, ...})

Used by ``python -m harness.plot`` (``plot.html``) and the leaderboard (``leaderboard/index.html``). The charts
are drawn by uPlot, vendored in ``harness/vendor/uplot`` (see its README for the version and why), through the
small shared helpers of ``templates/charts.js``; both are inlined into the page.

Two rules keep text from the outside (run names, entry names, descriptions, CORE task labels) inert:

- ``fill`` substitutes every ``__NAME__`` placeholder in one pass: a value is never searched for placeholders,
  so a name containing ``__DATA__`` stays text.
- Data reaches the page's script only as ``script_json``, inside ``<script type="application/json">``, with
  ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\u`` escapes: no text can close the element or open an
  HTML comment in it (``</script>``, ``<!--``), and JSON.parse reads the same strings back.
"""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPLOT_DIR = HERE / "vendor" / "uplot"
UPLOT_JS = (UPLOT_DIR / "uPlot.iife.min.js").read_text(encoding="utf-8")
UPLOT_CSS = (UPLOT_DIR / "uPlot.min.css").read_text(encoding="utf-8")
CHARTS_JS = (HERE / "templates" / "charts.js").read_text(encoding="utf-8")
# Characters that could end the script element or start a comment inside it, and the two that JavaScript
# source once treated as line ends: written as \u escapes, which JSON.parse turns back into the same text.
SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}

__all__ = ["CHARTS_JS", "UPLOT_CSS", "UPLOT_JS", "escape", "fill", "script_json"]


def script_json(obj: object) -> str:
    """``obj`` as strict JSON (no NaN or Infinity) that is safe inside ``<script type="application/json">``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: SCRIPT_ESCAPES[m.group()], text)


def fill(template: str, values: dict[str, str]) -> str:
    """Replace each ``__KEY__`` of ``template`` by ``values[KEY]`` in one pass. Every key must occur in the
    template (a missing one is a bug in the template, not in the data)."""
    missing = [key for key in values if f"__{key}__" not in template]
    if missing:
        raise ValueError(f"template has no placeholder for {', '.join(missing)}")
    pattern = re.compile("|".join(re.escape(f"__{key}__") for key in values))
    return pattern.sub(lambda m: values[m.group()[2:-2]], template)
