"""The record track's committed pins (leaderboard/track.json, leaderboard/pins.py) agree with the project's own
manifests and code, and the digests the leaderboard re-derives are the ones the harness computes.

    pytest tests/test_leaderboard_pins.py

When one of these fails after a manifest changed (a shard pinned in harness/catalog/climbmix.json, the tokenizer
trained, the bundle's missing files pinned), copy the new values into leaderboard/track.json in the same reviewed
commit: that is a new version of the record track.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
from helpers_evals import BUNDLE

from evals.bundle import load_bundle, load_manifest, read_config
from harness.data.catalog import get_spec
from harness.data.shards import get_tokenizer
from harness.data.verify import _dataset_digest
from harness.profiles import PROFILES
from harness.referee import RECORD_PROFILE
from harness.tokenizer import FORMAT_VERSION, SPECIAL_TOKENS, SPLIT_PATTERN
from leaderboard.pins import bundle_digest, data_digest
from leaderboard.store import PACKAGE_DIR, LeaderboardError, read_pins

PINS = read_pins(PACKAGE_DIR)


def test_the_data_pin_is_the_climbmix_catalog():
    spec = get_spec("climbmix")
    pin = PINS["data"]
    assert (pin["dataset"], pin["filename"], pin["num_shards"], pin["val_shard"]) == (
        spec.name, spec.filename, spec.num_shards, spec.val_shard,
    )  # fmt: skip
    assert pin["digests"] == spec.digests  # empty today: no climbmix shard digest is committed yet
    assert pin["source"]["repo_id"] == spec.source["repo_id"] and pin["source"]["revision"] == spec.source["revision"]


def test_the_tokenizer_pin_is_the_record_profiles_tokenizer_and_has_no_digest_until_one_is_trained():
    pin = PINS["tokenizer"]
    assert pin["vocab_size"] == PROFILES[RECORD_PROFILE].vocab_size == 32768
    assert (pin["split_pattern"], pin["special_tokens"], pin["format_version"]) == (
        SPLIT_PATTERN, SPECIAL_TOKENS, FORMAT_VERSION,
    )  # fmt: skip
    defaults = inspect.signature(get_tokenizer).parameters
    assert pin["recipe"]["max_chars"] == defaults["max_chars"].default
    assert pin["recipe"]["doc_cap"] == defaults["doc_cap"].default
    assert pin["digest"] is None and "has not been trained" in pin["note"]


@pytest.mark.skipif(not (BUNDLE / "core.yaml").is_file(), reason=f"no eval bundle at {BUNDLE}")
def test_the_bundle_pin_is_the_full_22_task_manifest():
    pin = PINS["eval_bundle"]
    assert pin["files"] == load_manifest() and len(pin["files"]) == 23  # core.yaml, the csv, 21 task files
    assert load_manifest()["core.yaml"] is not None  # so the committed core.yaml below is the pinned one
    entries = read_config(BUNDLE / "core.yaml")
    assert pin["labels"] == [e["label"] for e in entries] and len(pin["labels"]) == 22
    assert sorted({f"eval_data/{e['dataset_uri']}" for e in entries} | {"core.yaml", "eval_meta_data.csv"}) == sorted(
        pin["files"]
    )


@pytest.mark.skipif(not (BUNDLE / "core.yaml").is_file(), reason=f"no eval bundle at {BUNDLE}")
def test_the_bundle_digest_is_the_one_evals_bundle_computes(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    bundle = load_bundle(copy)
    assert bundle_digest(bundle.file_digests) == bundle.digest


def test_the_data_digest_is_the_one_harness_data_computes():
    shards = {f"shard_{i:05d}.parquet": f"{i:064x}" for i in (0, 1, 2, 10, 6542)}
    val = "shard_06542.parquet"
    train = [Path(name) for name in sorted(shards) if name != val]
    assert data_digest("climbmix", shards, val) == _dataset_digest("climbmix", train, Path(val), shards)


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda d: d["record"]["pins"].pop("tokenizer"), "'record.pins': 'tokenizer' is a required property"),
        (
            lambda d: d["record"]["pins"]["data"].update(digests={"shard_00000.parquet": "x"}),
            "'record.pins.data.digests.shard_00000.parquet': 'x' does not match",
        ),  # fmt: skip
        (lambda d: d["record"]["pins"]["tokenizer"].update(digest="e" * 63), "'record.pins.tokenizer.digest': 'eee"),
        (lambda d: d.update(record=[]), "'record': [] is not of type 'object'"),
    ],
)
def test_a_damaged_track_json_is_refused_naming_the_field(tmp_path, edit, named):
    doc = json.loads((PACKAGE_DIR / "track.json").read_text())
    edit(doc)
    (tmp_path / "track.json").write_text(json.dumps(doc))
    with pytest.raises(LeaderboardError, match="restore it from git") as e:
        read_pins(tmp_path)
    assert named in str(e.value)
