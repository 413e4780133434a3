"""A submission folder written by a test: ``write_submission(tmp_path / "name", source)``."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_submission(folder: Path, body: str) -> Path:
    """``folder/submission.py`` holding ``body`` (dedented) and a one-line README; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.py").write_text(textwrap.dedent(body))
    (folder / "README.md").write_text("# test submission\n")
    return folder
