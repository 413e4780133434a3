"""Tests of ``hf:`` datasets (harness/data/hf.py): any Hugging Face dataset, streamed with `datasets` from a local
Hub on 127.0.0.1 and materialised into verified shards with a manifest, and a CPU run on one.

    pytest tests/test_hf_datasets.py

`datasets` reads HF_ENDPOINT when it is imported, so materialising runs as `python -m harness.data download
'hf:...'` in a subprocess with HF_ENDPOINT set, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers_data import smoke_dataset
from helpers_hub import LocalHub, hf_dataset_files

from harness.data import DataError, MissingShardError, parse_hf_name, prepare_dataset, verify
from harness.data.hf import MANIFEST
from harness.data.shards import iter_documents
from harness.record import validate_record

REPO = Path(__file__).resolve().parents[1]
NAME = "hf:org/plays?bytes=1M&val_docs=100"


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return list(iter_documents(smoke_dataset().train_files[:4]))


@pytest.fixture(scope="module")
def hub(docs):
    """A local Hub serving dataset "org/plays": two parquet files (id, title, text) of smoke documents."""
    with LocalHub() as local:
        commit = local.add_dataset("org/plays", hf_dataset_files(docs))
        yield local, commit


def hub_env(endpoint: str, home: Path, **extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SPEEDRUN_", "HF_"))}
    return {**inherited, "PYTHONPATH": str(REPO), "HF_ENDPOINT": endpoint, "HF_HOME": str(home), **extra}


def data_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.data", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def materialised(hub, tmp_path_factory) -> Path:
    """NAME materialised once through the command line; returns the data dir."""
    local, _ = hub
    root = tmp_path_factory.mktemp("hf-data")
    proc = data_cli(["download", NAME, "--data-dir", str(root)], hub_env(local.endpoint, root.parent / "hf-home"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_an_hf_dataset_is_materialised_into_verified_shards_with_a_manifest_naming_its_commit(hub, docs, materialised):
    _, commit = hub
    ds = prepare_dataset(NAME, data_dir=materialised)  # from the manifest: no network from here on
    described = ds.describe()
    assert described["dataset"] == NAME and not described["pinned"]
    assert described["source"]["repo_id"] == "org/plays" and described["source"]["revision"] == commit
    assert described["source"]["split"] == "train" and described["source"]["column"] == "text"
    assert described["shards"] == json.loads((ds.val_file.parent / MANIFEST).read_text())["digests"]
    assert "development-track" in described["not_eligible"][0]
    # the first 100 documents of the stream validate, the next ones (1 MB of text) train, in stream order
    val = pq.read_table(ds.val_file).column("text").to_pylist()
    train = list(iter_documents(ds.train_files))
    assert val == docs[:100] and train == docs[100 : 100 + len(train)]
    size = sum(len(t.encode()) for t in train)
    assert size >= 1_000_000 > size - len(train[-1].encode())
    assert pq.ParquetFile(ds.val_file).schema_arrow.names == ["text"]


def test_the_same_hf_dataset_materialised_twice_gives_the_same_digests(hub, materialised, tmp_path):
    local, _ = hub
    proc = data_cli(["download", NAME, "--data-dir", str(tmp_path)], hub_env(local.endpoint, tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again = prepare_dataset(NAME, data_dir=materialised), prepare_dataset(NAME, data_dir=tmp_path)
    assert again.digests == first.digests and again.digest == first.digest


def test_a_materialised_hf_dataset_works_offline_and_a_missing_one_offline_names_both_fixes(materialised, tmp_path):
    env = hub_env("http://127.0.0.1:9", tmp_path / "home", HF_HUB_OFFLINE="1")
    assert data_cli(["download", NAME, "--data-dir", str(materialised)], env).returncode == 0
    proc = data_cli(["download", NAME, "--data-dir", str(tmp_path / "empty")], env)
    assert proc.returncode == 1
    assert "is not materialised" in proc.stderr and "cannot be reached" in proc.stderr
    assert "python -m harness.data download 'hf:org/plays?bytes=1M&val_docs=100'" in proc.stderr
    assert "SPEEDRUN_DATA_DIR" in proc.stderr
    with pytest.raises(MissingShardError, match="is not materialised"):
        verify(NAME, data_dir=tmp_path / "empty")  # verify checks what is there, it never materialises


def test_a_missing_hf_dataset_id_gives_a_clear_error(hub, tmp_path, monkeypatch):
    local, _ = hub
    monkeypatch.setenv("HF_ENDPOINT", local.endpoint)
    with pytest.raises(DataError) as info:
        prepare_dataset("hf:nobody/missing", data_dir=tmp_path)
    message = str(info.value)
    assert "no dataset 'nobody/missing'" in message and "select_dataset" in message and "HF_TOKEN" in message
    assert not list(tmp_path.rglob("*.parquet"))


def test_an_unknown_revision_of_an_hf_dataset_gives_a_clear_error(hub, tmp_path, monkeypatch):
    local, _ = hub
    monkeypatch.setenv("HF_ENDPOINT", local.endpoint)
    with pytest.raises(DataError, match="dataset org/plays on .* has no revision 'v9'"):
        prepare_dataset("hf:org/plays@v9", data_dir=tmp_path)


def test_hf_names_are_canonical_and_bad_ones_are_refused_naming_the_problem():
    spelled = parse_hf_name("hf:org/plays?val_docs=100&split=train&bytes=1000k")
    assert spelled.name == NAME and spelled.bytes == 1_000_000 and spelled.val_bytes is None
    assert parse_hf_name("hf:org/plays@v2?config=en&docs=5").name == "hf:org/plays@v2?config=en&docs=5"
    for bad, named in [
        ("hf:org/plays?size=3", "unknown or empty option 'size=3'"),
        ("hf:org/plays?docs=3&bytes=2", "give docs or bytes, not both"),
        ("hf:org/plays?bytes=2T", "bytes='2T'"),
        ("hf:../etc?docs=1", "not a Hugging Face dataset id"),
        ("hf:org/plays@?docs=1", "not a branch, tag or commit"),
    ]:
        with pytest.raises(ValueError, match=named.replace("?", r"\?")):
            parse_hf_name(bad)


def test_the_command_line_refuses_a_bad_hf_name_with_the_usage(tmp_path):
    proc = data_cli(["download", "hf:org/plays?docs=0"], hub_env("http://127.0.0.1:9", tmp_path))
    assert proc.returncode == 2 and "usage:" in proc.stderr and "docs='0'" in proc.stderr


@pytest.mark.slow
def test_a_cpu_run_on_an_hf_dataset_records_its_commit_and_digests_and_is_not_eligible(hub, session_cache, tmp_path):
    local, commit = hub
    folder = tmp_path / "hf_submission"
    folder.mkdir()
    (folder / "README.md").write_text("# trains on a Hugging Face dataset\n")
    (folder / "submission.py").write_text(
        textwrap.dedent(
            f"""
            from harness import hookimpl

            @hookimpl
            def select_dataset():
                return {NAME!r}
            """
        )
    )
    env = {**hub_env(local.endpoint, tmp_path / "home"), "SPEEDRUN_CACHE": str(session_cache), "WANDB_MODE": "disabled"}
    out, data = tmp_path / "out", tmp_path / "data"
    cmd = [sys.executable, "-m", "harness.run", str(folder), "--profile", "cpu", "--depth", "2", "--max-steps", "6",
           "--no-core", "--data-dir", str(data), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "record.json").read_text())
    assert validate_record(record) == []
    manifest = json.loads(next(data.rglob(MANIFEST)).read_text())
    assert record["data"]["dataset"] == NAME and record["data"]["selected"] == NAME
    assert record["data"]["source"]["repo_id"] == "org/plays" and record["data"]["source"]["revision"] == commit
    assert record["data"]["shards"] == manifest["digests"]
    assert not record["eligibility"]["eligible"]
    assert any("development-track" in reason for reason in record["eligibility"]["reasons"])
