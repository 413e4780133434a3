"""The submission contract: loading, fail-fast checks, tracing, and meta-tests that keep docs and tests honest."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers_submissions import write_submission

from harness import hookspecs
from harness.fileio import sha256_file
from harness.plugins import SubmissionError, hook_names, load_submission

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def test_submission_implementing_only_build_optimizer_lists_exactly_that_override(tmp_path):
    folder = write_submission(
        tmp_path / "only_opt",
        """
        import torch
        from harness import hookimpl

        @hookimpl
        def build_optimizer(model):
            return torch.optim.AdamW(model.parameters(), lr=1e-3)
        """,
    )
    sub = load_submission(str(folder))
    assert sub.overrides == ["build_optimizer"]
    assert sub.name == "only_opt"
    assert set(sub.files) == {"submission.py", "README.md"}


def test_the_submission_answers_before_the_baseline_and_the_baseline_fills_the_rest(tmp_path):
    folder = write_submission(
        tmp_path / "data_only",
        """
        from harness import hookimpl

        @hookimpl
        def select_dataset():
            return "fineweb-edu"
        """,
    )
    sub = load_submission(str(folder))
    impls = [sub.pm.get_name(impl.plugin) for impl in sub.hook.select_dataset.get_hookimpls()]
    assert impls[-1] == "submission:data_only"  # pluggy calls the last registered first
    assert "baseline:nanochat" in impls
    train_step_impls = [sub.pm.get_name(i.plugin) for i in sub.hook.train_step.get_hookimpls()]
    assert train_step_impls == ["harness-defaults"]


def test_misspelt_hook_fails_at_load_naming_the_hook_the_file_and_the_valid_names(tmp_path):
    folder = write_submission(
        tmp_path / "typo",
        """
        from harness import hookimpl

        @hookimpl
        def build_optimiser(model):
            return None
        """,
    )
    with pytest.raises(SubmissionError) as err:
        load_submission(str(folder))
    message = str(err.value)
    assert "build_optimiser" in message
    assert str(folder / "submission.py") in message
    assert "Did you mean 'build_optimizer'" in message
    for name in hook_names():
        assert name in message


def test_hook_named_function_without_decorator_is_rejected(tmp_path):
    folder = write_submission(tmp_path / "undecorated", "def build_model(run):\n    return None\n")
    with pytest.raises(SubmissionError, match="no @hookimpl decorator"):
        load_submission(str(folder))


def test_every_hook_function_without_decorator_is_named_in_one_error(tmp_path):
    body = "def build_model(run):\n    return None\n\ndef train_step(model, batches):\n    return None\n\n"
    body += "def build_schedule(optimizer, plan):\n    return None\n"
    folder = write_submission(tmp_path / "three_undecorated", body)
    with pytest.raises(SubmissionError) as err:
        load_submission(str(folder))
    assert str(err.value) == (
        f"{folder / 'submission.py'}: functions 'build_model', 'train_step', 'build_schedule' have hooks' names but "
        "no @hookimpl decorator, so they would be ignored. Add `from harness import hookimpl` and decorate each of "
        "them with @hookimpl."
    )


def test_a_misspelt_hook_and_a_missing_decorator_are_both_reported(tmp_path):
    body = "from harness import hookimpl\n\n@hookimpl\ndef build_optimiser(model):\n    return None\n\n"
    body += "def build_model(run):\n    return None\n"
    folder = write_submission(tmp_path / "two_problems", body)
    with pytest.raises(SubmissionError) as err:
        load_submission(str(folder))
    lines = str(err.value).splitlines()
    assert lines[0] == f"{folder / 'submission.py'}: 2 problems:"
    assert lines[1].startswith("  - unknown hook 'build_optimiser'. Did you mean 'build_optimizer'?")
    assert lines[2].startswith("  - function 'build_model' has a hook's name but no @hookimpl decorator")


def test_a_hook_implementation_imported_under_another_name_is_rejected_with_the_fix(tmp_path):
    folder = write_submission(
        tmp_path / "aliased",
        "from baselines.nanochat.submission import build_model as baseline_build_model\n",
    )
    with pytest.raises(SubmissionError, match="Import its module instead"):
        load_submission(str(folder))


def test_hook_with_an_unknown_argument_is_rejected(tmp_path):
    folder = write_submission(
        tmp_path / "badarg",
        """
        from harness import hookimpl

        @hookimpl
        def build_model(run, learning_rate):
            return None
        """,
    )
    with pytest.raises(SubmissionError, match="learning_rate"):
        load_submission(str(folder))


def test_import_error_names_the_submission_file(tmp_path):
    folder = write_submission(tmp_path / "broken", "import not_a_module_anywhere\n")
    with pytest.raises(SubmissionError) as err:
        load_submission(str(folder))
    assert str(folder / "submission.py") in str(err.value)
    assert "not_a_module_anywhere" in str(err.value)


def test_unknown_submission_names_the_ways_to_fix_it(tmp_path):
    with pytest.raises(SubmissionError, match="not a folder"):
        load_submission("no_such_submission_anywhere")
    with pytest.raises(SubmissionError, match="has no submission.py"):
        load_submission(str(tmp_path))


def test_a_repository_path_given_from_another_directory_names_the_path_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SubmissionError) as err:
        load_submission("submissions/climbmix")
    assert str(err.value) == (
        f"no folder 'submissions/climbmix' in the current directory {tmp_path} (a relative path is read from "
        f"there); the repository's submissions/climbmix is {REPO / 'submissions' / 'climbmix'}: pass that path, "
        f"or run the command from {REPO}"
    )


def test_a_path_that_exists_nowhere_is_named_with_an_example_that_works_from_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SubmissionError) as err:
        load_submission("submissions/no_such_idea")
    assert str(err.value) == (
        f"no folder 'submissions/no_such_idea' (looked in {tmp_path / 'submissions' / 'no_such_idea'}); pass the "
        f"path of a folder that holds submission.py, such as {REPO / 'submissions' / 'climbmix'}"
    )
    monkeypatch.chdir(REPO)  # from the repository root the example is the short relative path
    with pytest.raises(SubmissionError, match=r"such as submissions/climbmix$"):
        load_submission("submissions/no_such_idea")


def test_entry_point_submission_loads_by_name():
    sub = load_submission("gpt2")  # registered in pyproject.toml's speedrun.submissions group
    assert sub.path == REPO / "baselines" / "gpt2"
    assert "build_model" in sub.overrides


def test_misspelt_hook_fails_before_any_data_or_model_work(tmp_path):
    folder = write_submission(
        tmp_path / "typo_run",
        """
        from harness import hookimpl

        @hookimpl
        def build_optimiser(model):
            return None
        """,
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**__import__("os").environ, "SPEEDRUN_CACHE": str(tmp_path / "cache")},
        timeout=120,
    )
    assert proc.returncode == 1
    assert "build_optimiser" in proc.stderr and "submission.py" in proc.stderr
    cache = tmp_path / "cache"  # no data, tokenizer or bundle was prepared: only the eval process's bytecode is there
    assert [p.name for p in cache.iterdir()] == ["pycache"]
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "failed" and "unknown hook 'build_optimiser'" in record["error"]["message"]
    assert record["submission"]["files"] == {
        name: sha256_file(folder / name) for name in ("submission.py", "README.md")
    }
    assert "setup" not in record["phases"] and record["steps_completed"] == 0


def test_trace_hooks_prints_each_hook_call_with_its_implementations(tmp_path):
    folder = write_submission(
        tmp_path / "traced",
        """
        from harness import hookimpl

        @hookimpl
        def select_dataset():
            return "climbmix"
        """,
    )
    code = textwrap.dedent(
        f"""
        from harness.plugins import load_submission
        from harness.hookspecs import Run
        sub = load_submission({str(folder)!r})
        run = Run(profile="cpu", device="cpu", dtype="float32", rank=0, local_rank=0, world_size=1, seed=0,
                  vocab_size=512, bos_token_id=503, seq_len=64, depth=2)
        print(sub.hook.select_dataset(run=run))
        """
    )
    env = {**__import__("os").environ, "SPEEDRUN_TRACE_HOOKS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "[speedrun hook] select_dataset(run)" in proc.stderr
    assert "submission:traced, baseline:nanochat" in proc.stderr
    assert proc.stdout.strip() == "climbmix"


# ---- meta-tests: every hook is documented with its exact signature and has a test


def hook_signature(name: str) -> str:
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_in_the_readme_contract_with_its_exact_signature(name):
    readme = (REPO / "README.md").read_text()
    contract = readme.split("## The contract", 1)[1].split("\n## ", 1)[0]
    assert f"`{hook_signature(name)}`" in contract, f"README contract lacks `{hook_signature(name)}`"
    spec = getattr(hookspecs, name)
    kind = "firstresult" if spec.speedrun_spec["firstresult"] else "observer"
    assert re.search(rf"\| `{name}` \| .* \| {kind} \|", contract)


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_has_a_test_that_calls_it(name):
    pattern = re.compile(rf"hook\.{name}\(|def {name}\(|\b{name}\b.*hookimpl|@hookimpl\s+def {name}\(")
    sources = [p.read_text() for p in TESTS.rglob("test_*.py") if p.name != Path(__file__).name]
    assert any(pattern.search(src) for src in sources), f"no test outside this file exercises hook {name!r}"


def test_every_hookspec_has_a_protocol_docstring():
    for name in hook_names():
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and len(doc) > 40, f"hook {name} needs a docstring saying when it is called and what it returns"
