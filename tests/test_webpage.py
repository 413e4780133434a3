"""harness/webpage.py: template filling in one pass, JSON that cannot break out of its script element, and the
vendored uPlot checked against the digests its README states.

    pytest tests/test_webpage.py
"""

from __future__ import annotations

import json
import re

import pytest

from harness.fileio import sha256_file
from harness.webpage import CHARTS_JS, UPLOT_DIR, UPLOT_JS, fill, script_json

NASTY = ["</script><script>alert(1)</script>", "<!--<script>", "__DATA__", "a\u2028b\u2029c", "&amp;", "</SCRIPT >"]


def test_script_json_reads_back_as_the_same_strings_and_holds_no_markup():
    text = script_json({"labels": NASTY, "n": 1.5})
    assert not re.search(r"[<>&\u2028\u2029]", text)
    assert json.loads(text) == {"labels": NASTY, "n": 1.5}  # JSON.parse reads the \u escapes the same way


def test_script_json_refuses_non_finite_numbers():
    with pytest.raises(ValueError):
        script_json({"val_bpb": float("nan")})


def test_fill_substitutes_once_so_values_are_never_read_as_placeholders():
    page = fill("<h1>__TITLE__</h1><script>__DATA__</script><p>__TITLE__</p>", {"TITLE": "x__DATA__y", "DATA": "{}"})
    assert page == "<h1>x__DATA__y</h1><script>{}</script><p>x__DATA__y</p>"


def test_fill_names_a_placeholder_the_template_lacks():
    with pytest.raises(ValueError, match="template has no placeholder for NOTE"):
        fill("<p>__TITLE__</p>", {"TITLE": "t", "NOTE": "n"})


def test_the_inlined_scripts_cannot_end_their_script_element_early():
    for source in (UPLOT_JS, CHARTS_JS):
        assert not re.search(r"</script|<!--", source, re.IGNORECASE)


def test_the_vendored_files_are_the_ones_the_readme_names():
    table = (UPLOT_DIR / "README.md").read_text()
    stated = dict(re.findall(r"\| `([^`]+)` \| [^|]+ \| `([0-9a-f]{64})` \|", table))
    assert sorted(stated) == ["LICENSE", "uPlot.iife.min.js", "uPlot.min.css"]
    for name, digest in stated.items():
        assert sha256_file(UPLOT_DIR / name) == digest, name
