"""A Hugging Face Hub on 127.0.0.1 for tests: dataset repositories at fixed commits, served the way the Hub
serves them to `huggingface_hub` and `datasets`, with failures injected on request.

    with LocalHub() as hub:
        commit = hub.add_dataset("test/shards", {"shard_00000.parquet": b"..."})
        os.environ["HF_ENDPOINT"] = hub.endpoint      # before huggingface_hub / datasets are imported,
                                                       # or pass endpoint=hub.endpoint

It answers the calls those clients make (and nothing else):
- ``HEAD`` / ``GET /datasets/<repo>/resolve/<revision>/<path>``: the file, with ``X-Repo-Commit`` (the commit the
  revision resolved to), ``ETag`` (the git blob id) and ``X-Linked-Etag`` (the sha256, as for LFS files),
  ``Content-Length``, and ``206`` answers to ``Range`` requests;
- ``GET /api/datasets/<repo>`` and ``/api/datasets/<repo>/revision/<revision>``: the repository's info (``sha``,
  ``siblings``);
- ``GET /api/datasets/<repo>/tree/<revision>[/<path>]`` and ``POST /api/datasets/<repo>/paths-info/<revision>``:
  file listings, as ``HfFileSystem`` (used by ``datasets``) reads them.
Errors carry the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), from which
the client raises its typed errors.

``faults[path]`` is a list of actions used up one per request of that file (HEAD or GET): ``"500"`` (server error),
``"drop"`` (close the connection without answering), ``"truncate"`` (GET only: promise the whole body, send half,
close), ``"corrupt"`` (GET only: flip one byte of the body). ``requests`` logs every request as a ``Request``.
``hf_dataset_files`` makes the parquet files of a small dataset repository in the layout ``datasets`` reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Request:
    method: str
    path: str  # the file's path in the repository, or the API path
    range: str | None
    status: int  # 0: the connection was dropped
    sent: int  # body bytes sent
    url: str = ""  # the whole request path, with the revision


def hf_dataset_files(docs: list[str], files: int = 2) -> dict[str, bytes]:
    """A dataset repository as people publish them: ``data/train-0000i-of-0000n.parquet`` files with an ``id``, a
    ``title`` and a ``text`` column (in that order, so the harness must pick the text column by name), and a
    README."""
    per_file = -(-len(docs) // files)
    out = {"README.md": b"---\nlicense: cc0-1.0\n---\n# A test corpus\n"}
    for f in range(files):
        part = docs[f * per_file : (f + 1) * per_file]
        table = pa.table(
            {
                "id": [f"doc-{f * per_file + i}" for i in range(len(part))],
                "title": [text.split("\n", 1)[0][:40] for text in part],
                "text": part,
            }
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=500)
        out[f"data/train-{f:05d}-of-{files:05d}.parquet"] = buffer.getvalue()
    return out


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LocalHub:
    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}  # repo id -> commit -> path -> bytes
        self.refs: dict[str, dict[str, str]] = {}  # repo id -> branch -> commit
        self.faults: dict[str, list[str]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._url = threading.local()  # the request being answered, for the log
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: the client reuses connections

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                hub._serve(self, "HEAD")

            def do_GET(self):
                hub._serve(self, "GET")

            def do_POST(self):
                hub._serve(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    # ---- repositories

    def add_dataset(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Commit ``files`` (the whole tree) to ``branch`` of dataset ``repo_id``; returns the commit id."""
        parent = self.refs.get(repo_id, {}).get(branch, "")
        digest = hashlib.sha1(parent.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_id(files[path]).encode())
        commit = digest.hexdigest()
        self.repos.setdefault(repo_id, {})[commit] = dict(files)
        self.refs.setdefault(repo_id, {})[branch] = commit
        return commit

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- serving

    def _log(self, *args) -> None:
        with self._lock:
            self.requests.append(Request(*args, url=self._url.value))

    def _resolve(self, repo_id: str, revision: str) -> tuple[str | None, str | None]:
        """(commit, error code) for a revision: a branch name or a full commit id."""
        if repo_id not in self.repos:
            return None, "RepoNotFound"
        if revision in self.repos[repo_id]:
            return revision, None
        commit = self.refs[repo_id].get(revision)
        return (commit, None) if commit else (None, "RevisionNotFound")

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        self._url.value = h.path
        url = urlsplit(h.path)
        if method == "POST":
            length = int(h.headers.get("Content-Length") or 0)
            form = parse_qs(h.rfile.read(length).decode())
        else:
            form = {}
        if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url.path):
            return self._file(h, method, m.group(1), unquote(m.group(2)), unquote(m.group(3)))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", url.path):
            return self._info(h, m.group(1), unquote(m.group(2) or "main"))
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?", url.path):
            recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
            return self._tree(h, m.group(1), unquote(m.group(2)), unquote(m.group(3) or ""), recursive)
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", url.path):
            return self._paths_info(h, m.group(1), unquote(m.group(2)), form.get("paths", []))
        self._error(h, method, url.path, 404, None, "not a Hub route this test server knows")

    def _error(self, h, method: str, path: str, status: int, code: str | None, message: str, commit=None) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body)
        self._log(method, path, h.headers.get("Range"), status, 0)

    def _json(self, h, path: str, obj) -> None:
        body = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        self._log(h.command, path, None, 200, len(body))

    def _file(self, h, method: str, repo_id: str, revision: str, path: str) -> None:
        rng = h.headers.get("Range")
        action = self.faults[path].pop(0) if self.faults.get(path) else "ok"
        if action == "drop":
            h.close_connection = True
            self._log(method, path, rng, 0, 0)
            return
        if action == "500":
            return self._error(h, method, path, 500, None, "injected server error")
        commit, code = self._resolve(repo_id, revision)
        if code:
            return self._error(h, method, path, 404, code, f"{code}: {repo_id}@{revision}")
        files = self.repos[repo_id][commit]
        if path not in files:
            return self._error(h, method, path, 404, "EntryNotFound", f"{path} not in {repo_id}", commit=commit)
        data = files[path]
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "bytes=0-")
        start, end = int(m.group(1)), min(int(m.group(2) or len(data) - 1), len(data) - 1)
        if start >= len(data) > 0:
            return self._error(h, method, path, 416, None, "range not satisfiable")
        body = data[start : end + 1]
        status = 206 if rng else 200
        h.send_response(status)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{git_blob_id(data)}"')
        h.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method == "HEAD":
            self._log(method, path, rng, status, 0)
            return
        if action == "truncate":
            body = body[: len(body) // 2]
            h.close_connection = True
        if action == "corrupt":
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1 :]
        h.wfile.write(body)
        self._log(method, path, rng, status, len(body))

    def _entries(self, repo_id: str, commit: str) -> dict[str, dict]:
        """Every file and folder of a commit, as the tree API describes them, by path."""
        out: dict[str, dict] = {}
        for path, data in self.repos[repo_id][commit].items():
            parts = path.split("/")
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                out.setdefault(folder, {"type": "directory", "path": folder, "oid": git_blob_id(folder.encode())})
            out[path] = {
                "type": "file",
                "path": path,
                "size": len(data),
                "oid": git_blob_id(data),
                "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
            }
        return out

    def _info(self, h, repo_id: str, revision: str) -> None:
        commit, code = self._resolve(repo_id, revision)
        if code:
            return self._error(h, "GET", h.path, 404, code, f"{code}: {repo_id}@{revision}")
        siblings = [{"rfilename": p} for p in sorted(self.repos[repo_id][commit])]
        info = {"_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": commit, "private": False,
                "gated": False, "disabled": False, "tags": [], "siblings": siblings,
                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"}  # fmt: skip
        self._json(h, h.path, info)

    def _tree(self, h, repo_id: str, revision: str, folder: str, recursive: bool) -> None:
        commit, code = self._resolve(repo_id, revision)
        if code:
            return self._error(h, "GET", h.path, 404, code, f"{code}: {repo_id}@{revision}")
        entries = self._entries(repo_id, commit)
        if folder and entries.get(folder, {}).get("type") != "directory":
            return self._error(h, "GET", h.path, 404, "EntryNotFound", f"{folder} not in {repo_id}", commit=commit)
        prefix = f"{folder}/" if folder else ""
        listed = [
            e for p, e in sorted(entries.items()) if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])
        ]
        self._json(h, h.path, listed)

    def _paths_info(self, h, repo_id: str, revision: str, paths: list[str]) -> None:
        commit, code = self._resolve(repo_id, revision)
        if code:
            return self._error(h, "POST", h.path, 404, code, f"{code}: {repo_id}@{revision}")
        entries = self._entries(repo_id, commit)
        self._json(h, h.path, [entries[p] for p in paths if p in entries])
