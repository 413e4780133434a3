"""Tests of the eval bundle (evals/bundle.py): manifest checks, first-seen digests, one download under a lock.

    pytest tests/test_bundle.py

Tampered bundles are small copies of the real one in a temporary folder; downloads come from a real HTTP
server on 127.0.0.1 serving a zip built here, fetched by two processes at once.
"""

from __future__ import annotations

import http.server
import multiprocessing
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest
from helpers_evals import BUNDLE

from evals.bundle import BundleError, load_manifest, resolve_bundle

pytestmark = pytest.mark.skipif(not (BUNDLE / "core.yaml").is_file(), reason=f"no eval bundle at {BUNDLE}")
MISSING = ["hellaswag_zeroshot", "hellaswag", "squad", "coqa"]
SMALL = ["eval_data/commonsense_reasoning/copa.jsonl", "eval_data/language_understanding/winograd_wsc.jsonl"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own cache (first-seen digests, downloads) and no bundle from the environment."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPEEDRUN_EVAL_BUNDLE", raising=False)
    monkeypatch.delenv("SPEEDRUN_EVAL_BUNDLE_URL", raising=False)


def small_copy(dest: Path, files=SMALL) -> Path:
    """core.yaml, the csv and a few task files of the real bundle: the rest count as missing."""
    for rel in ["core.yaml", "eval_meta_data.csv", *files]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BUNDLE / rel, dest / rel)
    return dest


def test_the_shared_bundle_verifies_and_names_its_missing_labels():
    bundle = resolve_bundle(BUNDLE)
    assert len(bundle.tasks) == 18 and bundle.missing_labels == MISSING
    assert len(bundle.file_digests) == 20 and bundle.first_seen == []
    assert all(bundle.file_digests[rel] == digest for rel, digest in load_manifest().items() if digest)
    assert bundle.random_baselines["boolq"] == 62 and bundle.random_baselines["bigbench_language_identification"] == 9.1
    jeopardy = next(t for t in bundle.tasks if t.label == "jeopardy")
    assert (jeopardy.task_type, jeopardy.num_fewshot, jeopardy.delimiter) == ("language_modeling", 10, "\nAnswer: ")
    assert next(t for t in bundle.tasks if t.label == "copa").delimiter == " "
    assert bundle.digest == resolve_bundle(BUNDLE).digest and len(bundle.digest) == 64


def test_one_changed_byte_in_a_task_file_is_refused_naming_the_file(tmp_path):
    root = small_copy(tmp_path / "bundle")
    copa = root / SMALL[0]
    data = bytearray(copa.read_bytes())
    data[100] ^= 1
    copa.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="copa.jsonl has changed") as err:
        resolve_bundle(root)
    assert load_manifest()[SMALL[0]] in str(err.value)


def test_a_changed_core_yaml_is_refused(tmp_path):
    root = small_copy(tmp_path / "bundle")
    with open(root / "core.yaml", "a") as f:
        f.write("\n")
    with pytest.raises(BundleError, match="core.yaml has changed"):
        resolve_bundle(root)


def test_a_partial_copy_lists_every_absent_label(tmp_path):
    bundle = resolve_bundle(small_copy(tmp_path / "bundle"))
    assert [t.label for t in bundle.tasks] == ["copa", "winograd"]
    assert len(bundle.missing_labels) == 20 and "arc_easy" in bundle.missing_labels


def test_an_unpinned_file_is_pinned_by_its_first_seen_digest(tmp_path):
    root = small_copy(tmp_path / "bundle")
    hellaswag = root / "eval_data/language_understanding/hellaswag.jsonl"
    hellaswag.write_text('{"query": "A man", "choices": ["sits", "runs"], "gold": 0}\n')
    first = resolve_bundle(root)
    assert first.first_seen == ["eval_data/language_understanding/hellaswag.jsonl"]
    assert {"hellaswag", "hellaswag_zeroshot"} <= {t.label for t in first.tasks}
    assert resolve_bundle(root).digest == first.digest
    hellaswag.write_text('{"query": "A man", "choices": ["sits", "walks"], "gold": 0}\n')
    with pytest.raises(BundleError, match="hellaswag.jsonl has changed.*first-seen"):
        resolve_bundle(root)


def test_a_folder_without_a_bundle_says_how_to_point_at_one_or_skip_core(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError) as err:
        resolve_bundle(empty)
    assert str(err.value) == (
        f"no CORE eval bundle at {empty} (core.yaml not found); pass the folder that holds core.yaml, "
        "eval_meta_data.csv and eval_data/ (harness.run --eval-bundle DIR or $SPEEDRUN_EVAL_BUNDLE), or run "
        f"without CORE (harness.run --no-core); without a path the bundle is downloaded into the cache "
        f"({tmp_path / 'cache' / 'eval_bundle'})"
    )  # and no advice to unset SPEEDRUN_EVAL_BUNDLE, which is not set


def test_a_wrong_speedrun_eval_bundle_is_named_as_the_source_of_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_EVAL_BUNDLE", str(tmp_path))
    with pytest.raises(BundleError) as err:
        resolve_bundle()
    assert str(err.value).endswith(
        "; SPEEDRUN_EVAL_BUNDLE names it: correct it, or unset it to download the bundle into the cache"
    )
    monkeypatch.setenv("SPEEDRUN_EVAL_BUNDLE", str(BUNDLE))
    assert resolve_bundle().root == BUNDLE


def test_the_parent_of_a_bundle_folder_is_pointed_to_its_eval_bundle_subfolder(tmp_path):
    small_copy(tmp_path / "downloads" / "eval_bundle")
    with pytest.raises(BundleError) as err:
        resolve_bundle(tmp_path / "downloads")
    assert str(err.value) == (
        f"no CORE eval bundle at {tmp_path / 'downloads'} (core.yaml not found); "
        f"{tmp_path / 'downloads' / 'eval_bundle'} holds one: pass {tmp_path / 'downloads' / 'eval_bundle'}"
    )


# ------------------------------------------------------------------------------------------------
# Download


class ZipServer:
    """Serves one zip on 127.0.0.1, ``delay`` seconds late, and counts the requests for it."""

    def __init__(self, payload: bytes, delay: float = 0.0):
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                time.sleep(delay)  # keep the first download in flight while the other process arrives
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/eval_bundle.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def zip_of(folder: Path, dest: Path) -> bytes:
    """A zip laid out like upstream's: everything under a top-level eval_bundle/ folder."""
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, "eval_bundle/" + path.relative_to(folder).as_posix())
    return dest.read_bytes()


def _resolve_in_child(queue) -> None:
    bundle = resolve_bundle()
    queue.put((str(bundle.root), bundle.digest))


def test_concurrent_processes_download_the_bundle_once(tmp_path, monkeypatch):
    server = ZipServer(zip_of(small_copy(tmp_path / "src"), tmp_path / "b.zip"), delay=1.5)
    monkeypatch.setenv("SPEEDRUN_EVAL_BUNDLE_URL", server.url)
    try:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_resolve_in_child, args=(queue,)) for _ in range(2)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert all(p.exitcode == 0 for p in procs)
    finally:
        server.close()
    cache = tmp_path / "cache" / "eval_bundle"
    assert server.requests == 1
    assert results[0] == results[1] == (str(cache), resolve_bundle(tmp_path / "src").digest)
    assert not list(cache.parent.glob("*.zip")) and not list(cache.parent.glob(".eval_bundle.*"))


def test_a_failed_download_names_the_url_and_the_fix(monkeypatch):
    server = ZipServer(b"")
    url = server.url
    server.close()  # nothing listens there any more
    monkeypatch.setenv("SPEEDRUN_EVAL_BUNDLE_URL", url)
    with pytest.raises(BundleError) as err:
        resolve_bundle()
    assert str(err.value).startswith(f"could not download the CORE eval bundle from {url} (")
    assert str(err.value).endswith(
        "; point to a local copy of the bundle folder (harness.run --eval-bundle DIR or $SPEEDRUN_EVAL_BUNDLE), or "
        "set SPEEDRUN_EVAL_BUNDLE_URL to a mirror of the zip, or run without CORE (harness.run --no-core)"
    )


def test_a_download_that_is_not_a_zip_is_refused(tmp_path, monkeypatch):
    server = ZipServer(b"<html>not found</html>")
    monkeypatch.setenv("SPEEDRUN_EVAL_BUNDLE_URL", server.url)
    try:
        with pytest.raises(BundleError, match="not a zip file"):
            resolve_bundle()
    finally:
        server.close()
    assert not (tmp_path / "cache" / "eval_bundle").exists()
