"""The CORE eval bundle: find it (or download it once), check every file against a committed manifest.

    bundle = resolve_bundle()                 # $SPEEDRUN_EVAL_BUNDLE, else the cache (downloaded if absent)
    bundle = resolve_bundle("path/to/eval_bundle")
    bundle.tasks, bundle.missing_labels, bundle.digest

The bundle layout and task table are in docs/spec/core.md (Bundle, Tasks). Every file the harness reads (core.yaml,
eval_meta_data.csv and each task's jsonl) must match its sha256 in ``evals/manifest.json``; a changed file is
refused with an error naming it. Files the manifest cannot pin (null: the copy it was computed from lacked
them) get a "first-seen" digest: the first digest seen is written to ``cache_dir()/eval_bundle.first_seen.json``
and later changes are refused; such files are listed in ``Bundle.first_seen`` and in the results.

A task whose jsonl is absent is not an error: its label goes to ``missing_labels`` and the eval reports a
partial score, never "CORE".
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.fileio import atomic_path, atomic_write_json, cache_dir, file_lock, read_json, sha256_file

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
MANIFEST_PATH = Path(__file__).with_name("manifest.json")
MANIFEST_SCHEMA = json.loads(MANIFEST_PATH.with_name("manifest.schema.json").read_text())
# The project's development checkouts keep a partial bundle in ../shared beside the repository.
SIBLING_BUNDLE = Path(__file__).resolve().parents[2] / "shared" / "eval_bundle"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
CONFIG_FILE = "core.yaml"
META_FILE = "eval_meta_data.csv"


class BundleError(RuntimeError):
    """The eval bundle is absent, unreadable or changed; the message says which file and how to fix it."""


@dataclass(frozen=True)
class TaskSpec:
    """One CORE task as core.yaml declares it, with its random baseline (percent) from the csv."""

    label: str
    task_type: str  # multiple_choice | schema | language_modeling
    num_fewshot: int
    delimiter: str
    dataset_uri: str  # relative to eval_data/
    path: Path
    random_baseline: float


@dataclass
class Bundle:
    """A verified bundle. ``tasks`` holds only the tasks whose file is present, in core.yaml order."""

    root: Path
    tasks: list[TaskSpec]
    missing_labels: list[str]
    digest: str  # sha256 over (path, digest) of every file used: one identity for the record
    file_digests: dict[str, str]  # relative path -> sha256, for every file used
    random_baselines: dict[str, float]  # label -> percent, for every label of core.yaml
    first_seen: list[str] = field(default_factory=list)  # files pinned by first-seen digest, not the manifest

    @property
    def partial(self) -> bool:
        return bool(self.missing_labels)


# ------------------------------------------------------------------------------------------------
# Finding and downloading


def bundle_locations(path: str | Path | None = None) -> list[Path]:
    """Every folder ``resolve_bundle(path)`` may read a bundle from, present or not (the referee watches them)."""
    given = path or os.environ.get("SPEEDRUN_EVAL_BUNDLE")
    return [*([Path(given).expanduser()] if given else []), cache_dir() / "eval_bundle", SIBLING_BUNDLE]


def resolve_bundle(path: str | Path | None = None) -> Bundle:
    """Return the verified bundle at ``path``, else $SPEEDRUN_EVAL_BUNDLE, else ``cache_dir()/eval_bundle``.

    Without a cached copy or a $SPEEDRUN_EVAL_BUNDLE_URL, a checkout with the project's ``shared/eval_bundle``
    beside it uses that folder.

    The cache copy is downloaded and unzipped once from $SPEEDRUN_EVAL_BUNDLE_URL (default: the upstream
    zip) under a file lock, so concurrent ranks or runs download it once. Raises BundleError when the
    bundle is missing or a file differs from the manifest.
    """
    if path is None and os.environ.get("SPEEDRUN_EVAL_BUNDLE"):
        path = os.environ["SPEEDRUN_EVAL_BUNDLE"]
    if path is not None:
        root = Path(path).expanduser()
        if not _is_file(root / CONFIG_FILE):
            raise BundleError(not_a_bundle_message(root))
    elif (
        not os.environ.get("SPEEDRUN_EVAL_BUNDLE_URL")
        and not (cache_dir() / "eval_bundle" / CONFIG_FILE).is_file()
        and (SIBLING_BUNDLE / CONFIG_FILE).is_file()
    ):
        root = SIBLING_BUNDLE  # a development checkout with the project's shared/ folder beside it
    else:
        root = download_bundle(cache_dir() / "eval_bundle", os.environ.get("SPEEDRUN_EVAL_BUNDLE_URL") or BUNDLE_URL)
    return load_bundle(root)


# How a user points the harness at a bundle, or does without one (harness.run's flags; evals.core names its own).
HOW_TO_POINT = "harness.run --eval-bundle DIR or $SPEEDRUN_EVAL_BUNDLE"
HOW_TO_SKIP = "or run without CORE (harness.run --no-core)"


def not_a_bundle_message(root: Path) -> str:
    """What to pass instead of ``root``, a folder without core.yaml: its ``eval_bundle/`` subfolder or its parent
    when they hold one, else how to point at a bundle, use the download or skip CORE."""
    problem = f"no CORE eval bundle at {root} ({CONFIG_FILE} not found)"
    for candidate in (root / "eval_bundle", root.parent):
        if _is_file(candidate / CONFIG_FILE):
            return f"{problem}; {candidate} holds one: pass {candidate}"
    env = os.environ.get("SPEEDRUN_EVAL_BUNDLE")
    if env and Path(env).expanduser() == root:
        source = "SPEEDRUN_EVAL_BUNDLE names it: correct it, or unset it to download the bundle into the cache"
    else:
        source = f"without a path the bundle is downloaded into the cache ({cache_dir() / 'eval_bundle'})"
    return (
        f"{problem}; pass the folder that holds {CONFIG_FILE}, {META_FILE} and eval_data/ ({HOW_TO_POINT}), "
        f"{HOW_TO_SKIP}; {source}"
    )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False where the OS refuses the path (a name too long, for example)."""
    try:
        return path.is_file()
    except OSError:
        return False


def download_bundle(dest: Path, url: str = BUNDLE_URL) -> Path:
    """Download and unzip the bundle to ``dest`` unless it is there; safe to call from many processes at once."""
    dest = Path(dest)
    if (dest / CONFIG_FILE).is_file():
        return dest
    with file_lock(dest):
        if (dest / CONFIG_FILE).is_file():  # another process finished while we waited for the lock
            return dest
        zip_path = dest.with_name(dest.name + ".zip")
        try:
            with (
                atomic_path(zip_path) as tmp,
                urllib.request.urlopen(url, timeout=60) as response,
                open(tmp, "wb") as f,
            ):
                shutil.copyfileobj(response, f, 1 << 20)
        except OSError as exc:
            raise BundleError(
                f"could not download the CORE eval bundle from {url} ({exc}); point to a local copy of the bundle "
                f"folder ({HOW_TO_POINT}), or set SPEEDRUN_EVAL_BUNDLE_URL to a mirror of the zip, {HOW_TO_SKIP}"
            ) from exc
        # Unzip beside dest and rename into place, so dest never holds half a bundle.
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
        try:
            _extract(zip_path, staging, url)
            found = [p.parent for p in staging.rglob(CONFIG_FILE)]
            if len(found) != 1:
                raise BundleError(f"the zip from {url} holds {len(found)} copies of {CONFIG_FILE}, expected one")
            os.replace(found[0], dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            zip_path.unlink(missing_ok=True)
    return dest


def _extract(zip_path: Path, into: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for name in archive.namelist():  # refuse members that would land outside the staging folder
                if not (into / name).resolve().is_relative_to(into.resolve()):
                    raise BundleError(f"the zip from {url} has an unsafe member path {name!r}")
            archive.extractall(into)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"the download from {url} is not a zip file ({exc}); check SPEEDRUN_EVAL_BUNDLE_URL") from exc


# ------------------------------------------------------------------------------------------------
# Verifying and parsing


FIRST_SEEN_FIX = "delete it (the files it pinned are pinned again on next sight)"


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, str | None]:
    """The manifest's ``files``: bundle-relative path -> sha256 (64 hex digits) or null (pinned on first sight)."""
    return read_json(path, "restore it from git", BundleError, MANIFEST_SCHEMA)["files"]


def load_bundle(root: str | Path) -> Bundle:
    """Verify and parse the bundle at ``root`` (no download)."""
    root = Path(root)
    manifest = load_manifest()
    checker = _Checker(root, manifest)
    checker.verify(CONFIG_FILE)
    checker.verify(META_FILE)
    entries = read_config(root / CONFIG_FILE)
    random_baselines = read_baselines(root / META_FILE)

    tasks, missing = [], []
    for entry in entries:
        label, rel = entry["label"], f"eval_data/{entry['dataset_uri']}"
        if label not in random_baselines:
            raise BundleError(f"{root / META_FILE} has no 'Random baseline' for task {label!r}")
        if not (root / rel).is_file():
            missing.append(label)
            continue
        checker.verify(rel)
        tasks.append(
            TaskSpec(
                label=label,
                task_type=entry["icl_task_type"],
                num_fewshot=entry["num_fewshot"][0],
                delimiter=entry.get("continuation_delimiter", " "),
                dataset_uri=entry["dataset_uri"],
                path=root / rel,
                random_baseline=random_baselines[label],
            )
        )
    checker.commit_first_seen()
    lines = "".join(f"{rel} {digest}\n" for rel, digest in sorted(checker.digests.items()))
    return Bundle(
        root=root,
        tasks=tasks,
        missing_labels=missing,
        digest=hashlib.sha256(lines.encode()).hexdigest(),
        file_digests=dict(checker.digests),
        random_baselines={e["label"]: random_baselines[e["label"]] for e in entries},
        first_seen=sorted(checker.first_seen_used),
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise BundleError(f"{path}, line {line}: not UTF-8 text ({exc.reason}); restore the original file") from None


def read_config(path: Path) -> list[dict]:
    """The ``icl_tasks`` entries of a core.yaml, each checked: label, dataset_uri, icl_task_type, num_fewshot
    ([k], k >= 0) and the optional continuation_delimiter (default " ", filled in). Raises BundleError naming
    the file, the entry and the field."""
    try:
        config = yaml.safe_load(_read_text(path))
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a date-like scalar such as 2024-13-45
        raise BundleError(f"{path} is not valid YAML ({exc}); restore the original file") from None
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BundleError(f"{path}: expected a mapping with a non-empty list 'icl_tasks' of CORE tasks")
    checked, labels = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}, icl_tasks[{i}]"
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: expected a mapping with label, dataset_uri, icl_task_type and num_fewshot")
        for key in ("label", "dataset_uri", "icl_task_type"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise BundleError(f"{where}: '{key}' must be a non-empty string, got {entry.get(key)!r}")
        where = f"{path}, task {entry['label']!r}"
        if entry["label"] in labels:
            raise BundleError(f"{where}: the label appears twice; each task needs its own label")
        labels.add(entry["label"])
        uri = Path(entry["dataset_uri"])
        if uri.is_absolute() or ".." in uri.parts:
            raise BundleError(f"{where}: dataset_uri {entry['dataset_uri']!r} must be a path inside eval_data/")
        if entry["icl_task_type"] not in TASK_TYPES:
            raise BundleError(
                f"{where}: unknown icl_task_type {entry['icl_task_type']!r}; expected one of {', '.join(TASK_TYPES)}"
            )
        shots = entry.get("num_fewshot")
        if not (isinstance(shots, list) and len(shots) == 1 and type(shots[0]) is int and shots[0] >= 0):
            raise BundleError(f"{where}: num_fewshot must be a one-item list [k] with k >= 0, got {shots!r}")
        delimiter = entry.get("continuation_delimiter", " ")
        if not isinstance(delimiter, str):
            raise BundleError(f"{where}: continuation_delimiter must be a string, got {delimiter!r}")
        checked.append({**entry, "continuation_delimiter": delimiter})
    return checked


def read_baselines(path: Path) -> dict[str, float]:
    """eval_meta_data.csv's 'Random baseline' (percent, 0 <= rb < 100) by 'Eval Task'; rows without one are
    skipped. Raises BundleError naming the file, the line and the value."""
    rows = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        columns = rows.fieldnames or []
    except csv.Error as exc:
        raise BundleError(f"{path} is not a CSV file ({exc}); restore the original file") from None
    if "Eval Task" not in columns or "Random baseline" not in columns:
        raise BundleError(f"{path}: the header must name the columns 'Eval Task' and 'Random baseline'")
    baselines = {}
    try:
        for row in rows:
            label, value = row["Eval Task"], (row["Random baseline"] or "").strip()
            if not value:
                continue
            where = f"{path}, line {rows.line_num}"
            try:
                baseline = float(value)
            except ValueError:
                raise BundleError(f"{where}: 'Random baseline' of {label!r} is {value!r}, not a number") from None
            if not 0 <= baseline < 100:  # centered_score divides by 1 - rb/100
                raise BundleError(f"{where}: 'Random baseline' of {label!r} is {value}, expected a percent in [0, 100)")
            baselines[label] = baseline
    except csv.Error as exc:
        raise BundleError(f"{path}, line {rows.line_num}: malformed CSV ({exc}); restore the original file") from None
    return baselines


def first_seen_path() -> Path:
    return cache_dir() / "eval_bundle.first_seen.json"


class _Checker:
    """Compares files with the manifest, falling back to (and recording) first-seen digests for unpinned ones."""

    def __init__(self, root: Path, manifest: dict[str, str | None]):
        self.root, self.manifest = root, manifest
        self.digests: dict[str, str] = {}
        self.first_seen_used: list[str] = []
        self.new_first_seen: dict[str, str] = {}
        path = first_seen_path()
        self.first_seen = read_json(path, FIRST_SEEN_FIX, BundleError) if path.is_file() else {}

    def verify(self, rel: str) -> None:
        if rel in self.digests:  # hellaswag's file serves two labels
            return
        path = self.root / rel
        if not path.is_file():
            raise BundleError(f"{path} is missing from the eval bundle; re-download it or point to a complete copy")
        actual = sha256_file(path)
        if rel not in self.manifest:
            raise BundleError(f"{path} is not in {MANIFEST_PATH}: the bundle's {CONFIG_FILE} names an unknown file")
        expected, source = self.manifest[rel], f"the manifest {MANIFEST_PATH}"
        if expected is None:
            self.first_seen_used.append(rel)
            expected, source = self.first_seen.get(rel), f"its first-seen digest in {first_seen_path()}"
            if expected is None:
                self.new_first_seen[rel] = expected = actual
        if actual != expected:
            raise BundleError(
                f"eval bundle file {path} has changed: sha256 {actual}, expected {expected} from {source}; "
                f"restore the original file (delete the bundle folder to re-download it)"
            )
        self.digests[rel] = actual

    def commit_first_seen(self) -> None:
        if not self.new_first_seen:
            return
        path = first_seen_path()
        with file_lock(path):  # merge with what other processes may have recorded meanwhile
            current = read_json(path, FIRST_SEEN_FIX, BundleError) if path.is_file() else {}
            for rel, digest in self.new_first_seen.items():
                if current.setdefault(rel, digest) != digest:
                    raise BundleError(
                        f"eval bundle file {self.root / rel} has sha256 {digest}, but {path} recorded "
                        f"{current[rel]} first; restore the original file"
                    )
            atomic_write_json(path, current)
