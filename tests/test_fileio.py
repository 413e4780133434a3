"""harness/fileio.py: atomic writes keep the umask's permissions, and every JSON written is strict JSON.

    pytest tests/test_fileio.py

The files are real (a tokenizer trained here, a rendered leaderboard); the umask is set for each test and restored.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
from helpers_leaderboard import new_board, sample_record, write_run

from harness.fileio import atomic_write_json, atomic_write_text, read_json, strict_json, temp_dir
from harness.tokenizer import Tokenizer, train_tokenizer
from leaderboard.build import render
from leaderboard.store import add_entry


@pytest.fixture
def umask():
    """Set the process umask for one test (``umask(0o022)``); the previous one is restored afterwards."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_are_0644_and_temp_dirs_0755_under_umask_0022(tmp_path, umask):
    umask(0o022)
    atomic_write_text(tmp_path / "a.txt", "a")
    atomic_write_json(tmp_path / "record.json", {"status": "finished"})
    assert mode(tmp_path / "a.txt") == 0o644
    assert mode(tmp_path / "record.json") == 0o644
    assert mode(temp_dir(tmp_path)) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["a.txt", "record.json"]  # no leftovers


def test_a_private_umask_gives_private_files(tmp_path, umask):
    umask(0o077)
    atomic_write_text(tmp_path / "a.txt", "a")
    assert mode(tmp_path / "a.txt") == 0o600
    assert mode(temp_dir(tmp_path)) == 0o700


def test_a_saved_tokenizer_is_readable_by_everyone_under_umask_0022(tmp_path, umask):
    umask(0o022)
    tokenizer = train_tokenizer(["the cat sat on the mat " * 20, "a dog ran in the park " * 20], vocab_size=300)
    tokenizer.save(tmp_path / "tokenizer.json")
    assert mode(tmp_path / "tokenizer.json") == 0o644
    assert Tokenizer.load(tmp_path / "tokenizer.json").digest == tokenizer.digest


def test_the_rendered_leaderboard_and_its_entries_are_0644_and_0755_under_umask_0022(tmp_path, umask):
    umask(0o022)
    root = new_board(tmp_path / "board")
    runs = [write_run(tmp_path / f"s{seed}", sample_record(seed)) for seed in (1, 2)]
    entry = add_entry(runs, root=root, track="dev", name="modes")
    for path in render(root):
        assert mode(path) == 0o644, path
    assert mode(entry.path) == 0o755
    assert mode(entry.path / "seed-1" / "record.json") == 0o644
    assert mode(root / "index.html") == 0o644


def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity, as a browser's JSON.parse does."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON constant {name}"))


def test_non_finite_numbers_are_written_as_null_and_listed_in_a_note():
    record = {
        "status": "finished",
        "metrics": {"val_bpb": float("nan"), "core": 0.25, "final_loss": float("inf")},
        "loss_curve": [[0, 8.3], [1, float("-inf")]],
    }
    written = strict_loads(strict_json(record))
    assert written["metrics"] == {"val_bpb": None, "core": 0.25, "final_loss": None}
    assert written["loss_curve"] == [[0, 8.3], [1, None]]
    assert written["non_finite"] == {
        "metrics.val_bpb": "NaN",
        "metrics.final_loss": "Infinity",
        "loss_curve[1][1]": "-Infinity",
    }
    assert math.isnan(record["metrics"]["val_bpb"])  # the caller's object is left as it was


def test_an_event_line_with_a_non_finite_value_is_strict_and_says_so():
    line = {"time": 1.0, "t": 0.5, "event": "val_bpb", "key": 6, "value": float("nan")}
    assert strict_loads(strict_json(line)) == {**line, "value": None, "non_finite": {"value": "NaN"}}


def test_finite_json_is_written_unchanged_without_a_note(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": [1, 2.5], "b": None})
    assert strict_loads((tmp_path / "r.json").read_text()) == {"a": [1, 2.5], "b": None}


class Broken(ValueError):
    pass


def test_the_one_json_reader_names_the_file_what_is_wrong_and_the_fix_in_the_callers_error(tmp_path):
    path = tmp_path / "thing.json"
    schema = {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}}
    cases = {
        None: "thing.json: cannot read it (No such file or directory); FIX",
        b"\xff": "thing.json is not UTF-8 JSON",
        b"{": "thing.json is not UTF-8 JSON",
        b"[1]": "thing.json holds a JSON list, expected an object; FIX",
        b'{"count": 3.0}': "thing.json: 'count': 3.0 is not of type 'integer'; FIX",  # a count must be a real int
        b"{}": "thing.json: 'the top level': 'count' is a required property; FIX",
    }
    for content, message in cases.items():
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(Broken) as caught:
            read_json(path, "FIX", Broken, schema)
        assert message in str(caught.value)
    path.write_text('{"count": 3}')
    assert read_json(path, "FIX", Broken, schema) == {"count": 3}
