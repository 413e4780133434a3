"""`--help` of the command-line tools: the description is the module's whole first paragraph, never cut mid-sentence.

    pytest tests/test_help.py

Each command's ``main(["--help"])`` runs in this process: the text checked is what `python -m MODULE --help` prints.
"""

from __future__ import annotations

import importlib

import pytest

# module -> the end of its description's last sentence, as a user reads it in --help (whitespace reflowed)
ENDINGS = {
    "harness.compare": "computed by the statistics module (``harness/stats.py``).",
    "harness.ci": 'Answers "did this change make the speedrun slower?" in minutes.',
    "harness.plot": "overlaid across runs, with the learning-rate multiplier where the runs logged it.",
}


def help_text(module: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module", sorted(ENDINGS))
def test_help_shows_the_whole_first_paragraph_of_the_module_docstring(module, capsys):
    text = help_text(module, capsys)
    doc = importlib.import_module(module).__doc__
    first_paragraph = " ".join(doc.split("\n\n")[0].split())
    assert first_paragraph.endswith(ENDINGS[module])
    assert first_paragraph in text
