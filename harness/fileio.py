"""Small file utilities every part of the harness uses: content digests, atomic writes, strict JSON, one JSON
reader, file locks.

Every file the harness writes goes to a temporary name in the same directory and is renamed into place,
so a killed process never leaves a half-written file under the final name. The temporary file (or folder,
``temp_dir``) is created with the process's umask, as ``open`` would create the final name: the renamed
file is 0644 under umask 0022, not the 0600 of ``tempfile.mkstemp``.

Every JSON file is strict JSON (``strict_json``): NaN and infinities, which Python's ``json`` writes but
browsers and most parsers reject, are written as null and listed under a ``non_finite`` note. The JSON files a
person can edit or damage (manifests, locks, the bundle's first-seen digests, records, checkpoint metadata, the
CI baseline, leaderboard entries and pins) are read with ``read_json``, which names the file, what is wrong with
it and how to fix it, in the caller's error type.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

CHUNK = 1 << 20
# JSON Schema counts 3.0 as an integer; a count or an index the harness reads must be a real int.
StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", lambda _, value: type(value) is int),
)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _create_new(parent: Path, prefix: str, suffix: str, create) -> Path:
    """``create(path)`` for a fresh random name in ``parent``; FileExistsError picks another name."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new temporary name {prefix}*{suffix} in {parent}")


def temp_dir(parent: str | Path, prefix: str = ".tmp.") -> Path:
    """A new empty folder in ``parent`` with the umask's permissions (``tempfile.mkdtemp`` makes it 0700)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _create_new(parent, prefix, ".tmp", lambda p: p.mkdir(0o777))


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the kernel applies the umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_new(path.parent, f".{path.name}.", ".tmp", _new_file)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


NON_FINITE_NOTE = "non_finite"  # the key listing what strict_json wrote as null


def finite_only(obj: object, where: str = "") -> tuple[object, dict[str, str]]:
    """A copy of ``obj`` with every non-finite float replaced by None, and where each was: a JSON path such as
    ``metrics.val_bpb`` or ``loss_curve[3][1]`` mapped to ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, {where: "NaN" if math.isnan(obj) else "Infinity" if obj > 0 else "-Infinity"}
    notes: dict[str, str] = {}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out[key], found = finite_only(value, f"{where}.{key}" if where else str(key))
            notes.update(found)
        return out, notes
    if isinstance(obj, list | tuple):
        items = []
        for i, value in enumerate(obj):
            item, found = finite_only(value, f"{where}[{i}]")
            items.append(item)
            notes.update(found)
        return items, notes
    return obj, notes


def strict_json(obj: object, indent: int | None = None) -> str:
    """JSON text every parser accepts (``allow_nan=False``): each non-finite float is written as null and, when
    ``obj`` is an object, listed under ``"non_finite"`` (path -> "NaN" | "Infinity" | "-Infinity"), so a reader
    sees that the number was computed and was not finite rather than never computed. Use it for records
    (``{"metrics": {"val_bpb": null}, "non_finite": {"metrics.val_bpb": "NaN"}}``) and event lines alike."""
    clean, notes = finite_only(obj)
    if notes and isinstance(clean, dict):
        clean[NON_FINITE_NOTE] = {**(clean.get(NON_FINITE_NOTE) or {}), **notes}
    return json.dumps(clean, indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, obj: object) -> None:
    """``obj`` as strict JSON (``strict_json``), indented, written atomically."""
    atomic_write_text(path, strict_json(obj, indent=2) + "\n")


def read_json(path: str | Path, fix: str, error: type[Exception] = ValueError, schema: dict | None = None) -> dict:
    """The JSON object in ``path``, valid against ``schema`` when one is given; otherwise ``error`` naming the file,
    what is wrong with it and ``fix`` (what the user should do)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc}); {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path} is not UTF-8 JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, expected an object; {fix}")
    problem = best_match(StrictValidator(schema).iter_errors(data)) if schema is not None else None
    if problem is not None:
        where = ".".join(str(p) for p in problem.absolute_path) or "the top level"
        raise error(f"{path}: '{where}': {problem.message:.200}; {fix}")
    return data


def file_lock(path: str | Path, timeout: float = -1) -> FileLock:
    """An inter-process lock on ``path`` + ".lock" (blocks until acquired unless ``timeout`` >= 0)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout)


def cache_dir() -> Path:
    """Root of the harness's caches (data, tokenizers, eval bundle): $SPEEDRUN_CACHE or ~/.cache/speedrun."""
    root = os.environ.get("SPEEDRUN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "speedrun")
    return Path(root)


def check_free_space(path: Path, needed_bytes: int) -> None:
    """Refuse to start when the output directory's disk cannot hold the checkpoints and record."""
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise OSError(
            f"{path} has {free / 1e9:.2f} GB free but the run needs about {needed_bytes / 1e9:.2f} GB for its "
            f"checkpoints; free some space or pass --out DIR on a larger disk"
        )
