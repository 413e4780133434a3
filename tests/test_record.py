"""The record as its readers see it: harness.record.Record, validated, typed and frozen."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers_leaderboard import sample_record

import baselines.nanochat.submission  # noqa: F401 - imported as a worker imports it (provenance test)
from harness.record import REPO_ROOT, Metrics, Record, RecordError, Verdict
from harness.referee import judge
from harness.watch import library_roots
from harness.worker import imported_repo_files


def test_a_record_reads_back_to_the_same_json_with_its_sections_typed():
    data = sample_record(3, core=0.27)
    data["data"]["selected"] = "climbmix"  # a key the type does not declare is kept, in its place
    record = Record.from_json(data)
    assert record.to_json() == data
    assert list(record.to_json()) == list(data)  # the keys keep their order: the JSON is the same text
    assert record.metrics.core == 0.27 and record.run.seed == 3 and record.plan.num_steps == data["plan"]["num_steps"]
    assert record.data.extra["selected"] == "climbmix"
    assert isinstance(record.eligibility, Verdict) and record.eligibility.eligible
    assert record.loss_at(record.loss_curve[-1][0]) == record.loss_curve[-1][1]


def test_a_record_cannot_be_changed_once_read():
    record = Record.from_json(sample_record())
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "finished"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.phases["train"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        record.submission.files["submission.py"] = "0" * 64  # type: ignore[index]
    assert isinstance(record.loss_curve, tuple) and isinstance(record.eligibility.reasons, tuple)


def test_a_record_that_breaks_the_schema_is_refused_naming_every_field(tmp_path):
    data = sample_record()
    data["training_time_s"] = "fast"
    del data["metrics"]
    with pytest.raises(RecordError) as caught:
        Record.from_json(data)
    assert "training_time_s: 'fast' is not of type 'number'" in str(caught.value)
    assert "'metrics' is a required property" in str(caught.value)
    path = tmp_path / "record.json"
    path.write_text("[1, 2]")
    with pytest.raises(RecordError, match="record.json holds a JSON list, expected an object; pass the record.json"):
        Record.read(path)
    path.write_text("{")
    with pytest.raises(RecordError, match="record.json is not UTF-8 JSON"):
        Record.read(path)


def test_the_core_figure_is_core_when_every_task_ran_else_the_partial_mean():
    assert Metrics(core=0.26, core_partial=0.26).score == 0.26
    assert Metrics(core=None, core_partial=0.08).score == 0.08
    assert Metrics().score is None


def test_a_verdict_round_trips_through_the_record_it_is_stored_in(tmp_path):
    data = sample_record(profile="cpu", eligible=False)
    verdict = judge(Record.from_json(data))
    assert not verdict.eligible and "profile 'cpu' is not the record profile (8xh100)" in verdict.reasons
    data["eligibility"] = verdict.to_json()
    path = tmp_path / "record.json"
    path.write_text(json.dumps(data))
    assert Record.read(path).eligibility == verdict


def test_a_key_the_json_lacks_reads_as_the_fields_default_and_is_not_written_back():
    data = sample_record()
    del data["metrics"]["core_tasks"]  # optional in the schema
    record = Record.from_json(data)
    assert record.metrics.core_tasks == {} and record.tokenizer.digest == data["tokenizer"]["digest"]
    assert record.to_json() == data


def test_the_imported_files_are_the_repositorys_own_not_a_virtual_environment_inside_it():
    """Provenance lists the repository files a worker imported; a .venv inside the checkout (the README's
    quickstart makes one) holds the installed packages, which the installation check covers instead."""
    files = imported_repo_files()  # this process has imported the baseline, as a worker does
    assert {"harness/worker.py", "baselines/nanochat/model.py", "evals/bpb.py"} <= set(files)
    assert all((REPO_ROOT / f).is_file() for f in files)  # real files: no "_classes.py" of a module without one
    assert not [f for f in files if any((REPO_ROOT / f).resolve().is_relative_to(lib) for lib in library_roots())]
