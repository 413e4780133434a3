"""Downloading catalog shards from the Hugging Face Hub through ``huggingface_hub``, verified before they are used.

    python -m harness.data download climbmix --shards 0-169 --workers 8    # the validation shard comes too

``huggingface_hub`` does the transfers: ``HF_ENDPOINT`` (mirrors, the tests' local Hub), ``HF_TOKEN``,
``HF_HUB_OFFLINE``, its cache (a shard already there is copied, not downloaded), resumed ranges and retried
connections, and ``hf_xet`` transfers when the Hub serves Xet storage and ``hf_xet`` is installed. This module
decides which commit to ask for (the manifest's, else the one locked on the first download), checks each shard's
sha256 against the manifest (else the lock file, else the sha256 the Hub lists for it) before the shard takes its
place, and names what failed and how to fix it.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from harness.data.catalog import (
    COMMIT,
    DataError,
    DatasetSpec,
    DigestMismatchError,
    DownloadError,
    expected_digest,
    format_shards,
    get_spec,
    lock_path,
    read_lock_file,
    record_first_seen,
    resolve_root,
    write_lock,
)
from harness.fileio import file_lock, sha256_file

log = logging.getLogger("harness.data")

STAGING = ".hub"  # huggingface_hub downloads into <data dir>/NAME/.hub/; a verified shard is then renamed out
PATHS_PER_QUERY = 500  # file names per paths-info request

T = TypeVar("T")


def hub_endpoint() -> str:
    """The Hub to talk to: $HF_ENDPOINT as it is now (huggingface_hub reads it only once, when imported)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _transient(exc: Exception) -> bool:
    if isinstance(exc, HfHubHTTPError):  # an answer: retry server errors only
        return exc.response is not None and exc.response.status_code >= 500
    return isinstance(exc, HTTPError)  # no answer: refused, dropped, timed out


def with_retries(what: str, call: Callable[[], T], retries: int, backoff: float) -> T:
    """``call()``, retried ``retries`` times after ``backoff * 2**attempt`` seconds on a transient failure.

    huggingface_hub retries dropped and truncated transfers itself, and server errors when it fetches a file's
    metadata; it leaves a 5xx answer to the download itself, and a connection dropped during the metadata request,
    to its caller (its maintainers retry 500s only when streaming). Over 170 shards those happen, so they are
    retried here.
    """
    for attempt in itertools.count():
        try:
            return call()
        except (HTTPError, OSError) as exc:
            if not _transient(exc) or attempt >= retries:
                raise
            delay = backoff * 2**attempt
            log.warning("%s: %s; retry %d/%d in %.1fs", what, str(exc).splitlines()[0], attempt + 1, retries, delay)
            time.sleep(delay)


# ------------------------------------------------------------------------------------------------
# Which commit


def resolve_revision(spec: DatasetSpec, root: Path, missing: list[int], retries: int, backoff: float) -> str:
    """The commit to download from: the manifest's pinned commit, else the one locked on this machine's first
    download, else the commit the manifest's branch points to now (then locked)."""
    pinned = spec.revision if COMMIT.fullmatch(spec.revision or "") else None
    locked = read_lock_file(spec, root).get("revision")
    asked = pinned or locked or spec.revision or "main"
    repo = spec.source["repo_id"]
    try:
        info = with_retries(
            f"{repo}@{asked}",
            lambda: HfApi(endpoint=hub_endpoint()).dataset_info(repo, revision=asked),
            retries,
            backoff,
        )
    except RevisionNotFoundError:
        if pinned:
            where = f"pinned in {spec.manifest_path}"
            fix = f"if the repository's history was rewritten, put its new commit in {spec.manifest_path}"
        elif locked:
            where = f"locked on this machine's first download in {lock_path(spec, root)}"
            fix = (
                f"delete its 'revision' to take the current commit of {spec.revision or 'main'} (shards already "
                "downloaded stay checked against their first-seen digests)"
            )
        else:
            where = f"named in {spec.manifest_path}"
            fix = f"name an existing branch or commit in {spec.manifest_path}"
        raise DownloadError(
            f"{spec.name}: the Hub at {hub_endpoint()} has no revision {asked!r} of dataset {repo} ({where}). "
            f"Fix: {fix}."
        ) from None
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise DownloadError(
            f"{spec.name}: the Hub at {hub_endpoint()} does not give access to dataset {repo} "
            f"({str(exc).splitlines()[0]}). Fix: check source.repo_id in {spec.manifest_path}, or log in "
            "(`hf auth login`, or set HF_TOKEN) if the dataset is gated or private."
        ) from None
    except (HTTPError, ConnectionError) as exc:
        raise DownloadError(_unreachable(spec, missing, exc)) from None
    if pinned and info.sha != pinned:
        raise DownloadError(f"{spec.name}: asked the Hub for commit {pinned} of {repo} and it answered {info.sha}")
    if not pinned and not locked:
        record_first_seen(spec, root, revision=info.sha)
        log.info("%s: %s of %s is commit %s; locked in %s", spec.name, asked, repo, info.sha, lock_path(spec, root))
    return info.sha


def _unreachable(spec: DatasetSpec, missing: list[int], exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"cannot reach the Hugging Face Hub at {hub_endpoint()} ({first}), so {spec.name} shard(s) "
        f"{format_shards(missing)} (first {spec.shard_name(missing[0])}) cannot be downloaded. "
        f"Fix: run `python -m harness.data download {spec.name} --shards {format_shards(missing)}` where the Hub "
        "(or a mirror named by HF_ENDPOINT) is reachable, or point --data-dir / SPEEDRUN_DATA_DIR at a directory "
        f"that already holds {spec.name}/{spec.shard_name(missing[0])}."
    )


def hub_digests(spec: DatasetSpec, commit: str, names: list[str], retries: int, backoff: float) -> dict[str, str]:
    """The sha256 the Hub lists for each shard file (its LFS object id), for the shards nothing pins yet."""
    api, folder = HfApi(endpoint=hub_endpoint()), spec.source.get("subfolder")
    out: dict[str, str] = {}
    for start in range(0, len(names), PATHS_PER_QUERY):
        paths = [f"{folder}/{n}" if folder else n for n in names[start : start + PATHS_PER_QUERY]]
        infos = with_retries(
            f"{spec.name} file list",
            lambda paths=paths: api.get_paths_info(spec.source["repo_id"], paths, revision=commit, repo_type="dataset"),
            retries,
            backoff,
        )
        out.update({Path(i.path).name: i.lfs.sha256 for i in infos if getattr(i, "lfs", None)})
    return out


# ------------------------------------------------------------------------------------------------
# Downloading


def _verified_local(spec: DatasetSpec, index: int, root: Path) -> str | None:
    """The sha256 of a shard already on disk if it matches its pinned digest (or nothing pins it yet), else None
    (a copy that does not match is deleted, with a warning)."""
    name = spec.shard_name(index)
    path = spec.local_dir(root) / name
    if not path.exists():
        return None
    expected, origin = expected_digest(spec, name, root)
    actual = sha256_file(path)
    if expected is None:
        record_first_seen(spec, root, {name: actual})
        return actual
    if actual == expected:
        return actual
    log.warning("%s: sha256 on disk %s, the %s pins %s; downloading it again", name, actual, origin, expected)
    path.unlink()
    return None


def download_shard(
    spec: DatasetSpec, index: int, root: Path, commit: str, hub_sha256: str | None, retries: int, backoff: float
) -> str:
    """Download one shard of ``commit`` into ``<root>/<folder>`` and return its verified sha256.

    huggingface_hub writes it into the staging folder; it is renamed into place only once its sha256 matches the
    manifest, the first-seen lock or (for a shard seen for the first time) the sha256 the Hub lists.
    """
    name = spec.shard_name(index)
    final = spec.local_dir(root) / name
    with file_lock(final):
        if (have := _verified_local(spec, index, root)) is not None:
            return have
        expected, origin = expected_digest(spec, name, root)
        if expected is None and hub_sha256 is not None:
            expected, origin = hub_sha256, "Hub's file listing"
        repo = spec.source["repo_id"]
        try:
            path = with_retries(
                name,
                lambda: hf_hub_download(
                    repo,
                    name,
                    subfolder=spec.source.get("subfolder"),
                    repo_type="dataset",
                    revision=commit,
                    local_dir=spec.local_dir(root) / STAGING,
                    endpoint=hub_endpoint(),
                ),
                retries,
                backoff,
            )
        except RemoteEntryNotFoundError:
            raise DownloadError(
                f"{name}: not in {repo} at commit {commit}; check filename, num_shards and source.subfolder in "
                f"{spec.manifest_path}"
            ) from None
        except HfHubHTTPError as exc:
            raise DownloadError(
                f"{name}: the Hub at {hub_endpoint()} answered {str(exc).splitlines()[0]!r} {retries + 1} times; "
                f"try again later (`python -m harness.data download {spec.name} --shards {index}`)"
            ) from None
        except (HTTPError, LocalEntryNotFoundError, ConnectionError) as exc:
            raise DownloadError(f"{name}: {_unreachable(spec, [index], exc)}") from None
        actual = sha256_file(path)
        if expected is not None and actual != expected:
            Path(path).unlink()
            raise DigestMismatchError(
                spec.name,
                name,
                expected,
                actual,
                f"The Hub sent other bytes than the {origin} pins (commit {commit} of {repo}); the file was not kept.",
            )
        os.replace(path, final)
        if origin not in ("manifest", "lock"):
            record_first_seen(spec, root, {name: actual})
        log.info("%s: ok (sha256 %s)", name, actual)
        return actual


def download(
    name: str,
    shards: Iterable[int] | None = None,
    workers: int = 8,
    data_dir: Path | None = None,
    retries: int = 5,
    backoff: float = 1.0,
) -> dict[str, str]:
    """Download shards (and always the validation shard) in parallel; returns file name -> sha256.

    Shards already on disk and matching their digests are kept without asking the Hub. Raises DataError listing
    every shard that failed.
    """
    spec = get_spec(name)
    if spec.source["type"] != "huggingface":
        raise ValueError(f"dataset {name} is built locally, not downloaded: use prepare_dataset({name!r})")
    root = resolve_root(data_dir)
    indices = sorted(set(shards if shards is not None else range(spec.num_shards)) | {spec.val_shard})
    for i in indices:
        spec.shard_name(i)  # range check before any network traffic

    def local(i: int) -> str | None:
        with write_lock(spec.local_dir(root) / spec.shard_name(i), f"download {name} shards"):
            return _verified_local(spec, i, root)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        present = dict(zip(indices, pool.map(local, indices), strict=True))
    results = {spec.shard_name(i): digest for i, digest in present.items() if digest is not None}
    todo = [i for i in indices if spec.shard_name(i) not in results]
    if not todo:
        return results
    commit = resolve_revision(spec, root, todo, retries, backoff)
    unpinned = [spec.shard_name(i) for i in todo if expected_digest(spec, spec.shard_name(i), root)[0] is None]
    listed = hub_digests(spec, commit, unpinned, retries, backoff) if unpinned else {}
    failures = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {
            i: pool.submit(download_shard, spec, i, root, commit, listed.get(spec.shard_name(i)), retries, backoff)
            for i in todo
        }
        for i, future in futures.items():
            try:
                results[spec.shard_name(i)] = future.result()
            except DataError as exc:
                failures.append(str(exc))
    if failures:
        raise DownloadError(f"{len(failures)} of {len(indices)} {name} shards failed:\n" + "\n".join(failures))
    return dict(sorted(results.items()))
