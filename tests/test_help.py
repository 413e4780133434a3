"""`--help` of the command-line tools: the description is the module's whole first paragraph, never cut mid-sentence.

    pytest tests/test_help.py

Each command runs in this process as `python -m MODULE --help` would (runpy with a patched argv), so the text
checked is exactly what a user reads.
"""

from __future__ import annotations

import importlib
import runpy
import sys

import pytest

# module -> the end of its description's last sentence, as a user reads it in --help (whitespace reflowed)
ENDINGS = {
    "harness.compare": "computed by the leaderboard's statistics module (``leaderboard/stats.py``).",
    "harness.ci": 'Answers "did this change make the speedrun slower?" in minutes.',
    "harness.plot": "overlaid across runs, with the learning-rate multiplier where the runs logged it.",
}


def help_text(module: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module", sorted(ENDINGS))
def test_help_shows_the_whole_first_paragraph_of_the_module_docstring(module, monkeypatch, capsys):
    text = help_text(module, monkeypatch, capsys)
    doc = importlib.import_module(module).__doc__
    first_paragraph = " ".join(doc.split("\n\n")[0].split())
    assert first_paragraph.endswith(ENDINGS[module])
    assert first_paragraph in text
