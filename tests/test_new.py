"""`python -m harness.new`: a scaffold holds the source's hooks and a writeup template, and nothing else.

    pytest tests/test_new.py          # a few seconds: scaffolds into temporary folders, loads them with pluggy

The scaffolds are loaded with the real plugin loader; that a scaffold also trains and compares under the harness
is shown by the CONTRIBUTING.md walkthrough in tests/test_compare.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.new import main, scaffold
from harness.plugins import SubmissionError, load_submission

REPO = Path(__file__).resolve().parents[1]
CLIMBMIX = str(REPO / "submissions" / "climbmix")
BASELINE = str(REPO / "baselines" / "nanochat")


def code_after_docstring(text: str) -> str:
    first = ast.parse(text).body[0]
    return "".join(text.splitlines(keepends=True)[first.end_lineno :])


def test_scaffold_writes_only_a_hooks_file_and_a_readme(tmp_path):
    target = scaffold("only_two", CLIMBMIX, root=tmp_path)
    assert target == tmp_path / "only_two"
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "submission.py"]


def test_a_scaffold_overrides_the_same_hooks_as_its_source(tmp_path):
    target = scaffold("same_hooks", CLIMBMIX, root=tmp_path)
    copy, source = load_submission(str(target)), load_submission(CLIMBMIX)
    assert copy.overrides == source.overrides == ["build_model", "plan_training", "select_dataset"]
    assert copy.name == "same_hooks" and copy.source_digest != source.source_digest


def test_the_hooks_file_keeps_the_source_code_under_a_docstring_for_the_new_submission(tmp_path):
    target = scaffold("new_doc", CLIMBMIX, root=tmp_path)
    text = (target / "submission.py").read_text()
    source_text = (REPO / "submissions" / "climbmix" / "submission.py").read_text()
    assert code_after_docstring(text) == code_after_docstring(source_text)
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring.startswith("new_doc: ") and CLIMBMIX in docstring
    assert f"python -m harness.run {target.as_posix()}" in docstring
    assert "ClimbMix" not in docstring  # the source's description would describe the wrong submission


def test_a_scaffold_of_the_baseline_has_plain_hookimpls_and_every_planning_hook(tmp_path):
    target = scaffold("from_base", BASELINE, root=tmp_path)
    text = (target / "submission.py").read_text()
    assert "trylast" not in text and text.count("@hookimpl\n") == 5
    assert load_submission(str(target)).overrides == [
        "build_model",
        "build_optimizer",
        "build_schedule",
        "plan_training",
        "select_dataset",
    ]


def test_an_entry_point_name_is_a_valid_source(tmp_path):
    target = scaffold("from_gpt2", "gpt2", root=tmp_path)
    assert load_submission(str(target)).overrides == load_submission("gpt2").overrides


def test_the_readme_template_names_the_submission_its_source_and_the_commands(tmp_path):
    target = scaffold("writeup", CLIMBMIX, root=tmp_path)
    readme = (target / "README.md").read_text()
    assert readme.startswith("# writeup\n")
    assert f"Built on `{CLIMBMIX}`" in readme
    assert f"python -m harness.compare {CLIMBMIX} {target.as_posix()}" in readme
    assert "python -m leaderboard add" in readme
    assert f"-m harness.run {target.as_posix()} --profile 8xh100" in readme


def test_an_existing_folder_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists; pick another name"):
        scaffold("taken", CLIMBMIX, root=tmp_path)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("name", ["Upper", "1st", "with space", "../escape", "a" * 65, ""])
def test_a_name_that_is_not_a_plain_lower_case_folder_name_is_refused_with_the_rule(tmp_path, name):
    with pytest.raises(ValueError, match="lower-case letters, digits"):
        scaffold(name, CLIMBMIX, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_source_fails_naming_it_and_creates_nothing(tmp_path):
    with pytest.raises(SubmissionError, match="no submission 'nowhere'"):
        scaffold("orphan", "nowhere", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_command_exits_2_with_the_reason_on_a_bad_name(tmp_path, capsys):
    assert main(["Bad", "--from", CLIMBMIX, "--root", str(tmp_path)]) == 2
    assert "error: name 'Bad'" in capsys.readouterr().err


def test_the_command_prints_the_next_steps_of_contributing(tmp_path, capsys):
    assert main(["next_steps", "--from", CLIMBMIX, "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    target = (tmp_path / "next_steps").as_posix()
    assert f"created {target}/submission.py and {target}/README.md" in out
    assert f"python -m harness.run {target} --profile cpu" in out
    assert f"python -m harness.compare {CLIMBMIX} {target} --profile cpu" in out
