"""The run record: one JSON file per run, validated against the committed schema ``record.schema.json``.

    record = Record.read(Path("runs/x/record.json"))   # validated, typed and frozen (RecordError if not valid)
    record.metrics.score, record.eligibility.reasons    # every reader reads these, never the raw JSON
    errors = validate_record(data)     # [] when valid: for callers that report every problem themselves
    write_record(path, data)           # the referee: validates, then writes record.json atomically

A record holds everything needed to audit or replay a run: the submission's sources and digests, the
harness commit, the command line, library versions, hardware fingerprint and calibration, the plan,
digests of the data, tokenizer and eval bundle, phase times and the metrics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import jsonschema

from harness.clock import read_events
from harness.fileio import atomic_write_json, read_json, sha256_file

SCHEMA_PATH = Path(__file__).with_name("record.schema.json")
SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[1]
# The code that decides a result, and the baselines every submission runs on: a change here must show up as a
# different harness digest and, uncommitted, as a dirty harness.
HARNESS_PACKAGES = ("harness", "evals", "baselines")
LIBRARIES = ("torch", "tiktoken", "rustbpe", "pyarrow", "pandas", "pluggy", "numpy", "triton", "datasets", "wandb")


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_record(record: dict) -> list[str]:
    """Every way ``record`` breaks the schema, as readable strings; empty when it is valid."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]


class RecordError(ValueError):
    """A record that breaks the schema; the message lists every problem."""


def _freeze(value: Any) -> Any:
    """JSON made read-only: objects as mappings that refuse writes, arrays as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _empty() -> Mapping:
    return MappingProxyType({})


def _thaw(value: Any) -> Any:
    """The JSON a frozen value came from."""
    if isinstance(value, Section):
        return value.to_json()
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Section:
    """One JSON object of a record as a frozen dataclass: its declared fields typed (a field whose value is itself a
    Section is built as one), every other key kept read-only in ``extra``, and the keys as read, so that
    ``from_json(data).to_json() == data`` (one built in code has every declared field)."""

    SECTIONS: ClassVar[dict[str, type[Section]]] = {}  # field name -> the Section class its value is read into
    extra: Mapping = dataclasses.field(default_factory=_empty)  # keys the type does not declare, read-only
    keys: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)  # the keys as read, in order

    @classmethod
    def from_json(cls, data: Mapping | None):
        if data is None:
            return None
        declared = {f.name for f in dataclasses.fields(cls)} - {"extra", "keys"}
        values = {}
        for name in declared & data.keys():  # a key the JSON lacks keeps the field's default
            section = cls.SECTIONS.get(name)
            values[name] = section.from_json(data[name]) if section is not None else _freeze(data[name])
        extra = {key: value for key, value in data.items() if key not in declared}
        return cls(**values, extra=_freeze(extra), keys=tuple(data))

    def to_json(self) -> dict:
        declared = [f.name for f in dataclasses.fields(self) if f.name not in ("extra", "keys")]
        fields = {name: getattr(self, name) for name in declared} | dict(self.extra)
        return {key: _thaw(fields[key]) for key in self.keys or [*declared, *self.extra]}


@dataclasses.dataclass(frozen=True)
class Verdict(Section):
    """Whether the run can set a record and, when not, every reason (harness/referee.py decides)."""

    eligible: bool = False
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Metrics(Section):
    final_loss: float | None = None
    val_bpb: float | None = None  # on the profile's fixed validation rows, by the referee's eval process
    core: float | None = None  # None unless every CORE task was evaluated
    core_partial: float | None = None  # the mean over the tasks the bundle has
    core_label: str | None = None  # "CORE", "core_partial" or None (not evaluated)
    core_tasks: Mapping = dataclasses.field(default_factory=_empty)
    tokens_per_s: float | None = None
    mfu: float | None = None
    step_time_median_s: float | None = None
    peak_memory_gb: float | None = None

    @property
    def score(self) -> float | None:
        """The CORE figure a reader shows: CORE when every task ran, else the partial mean, else None."""
        return self.core if self.core is not None else self.core_partial


@dataclasses.dataclass(frozen=True)
class Submission(Section):
    name: str = ""
    path: str = ""
    source_digest: str = ""
    overrides: tuple[str, ...] = ()
    files: Mapping = dataclasses.field(default_factory=_empty)  # relative path -> sha256
    sources: Mapping = dataclasses.field(default_factory=_empty)  # relative path -> text


@dataclasses.dataclass(frozen=True)
class Harness(Section):
    version: str | None = None
    commit: str | None = None
    dirty: bool | None = None  # None: not a git checkout
    source_digest: str | None = None
    changed: tuple[str, ...] = ()
    changed_sources: Mapping = dataclasses.field(default_factory=_empty)


@dataclasses.dataclass(frozen=True)
class RunInfo(Section):
    seed: int = 0
    world_size: int = 1
    dtype: str | None = None
    depth: int | None = None  # the depth of the model that trained
    device: str | None = None


@dataclasses.dataclass(frozen=True)
class PlanInfo(Section):
    num_steps: int = 0
    total_batch_tokens: int = 0
    device_batch: int = 0
    seq_len: int = 0
    grad_accum: int = 1
    flops_per_token: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataInfo(Section):
    dataset: str = ""
    digest: str = ""
    pinned: bool = False
    shards: Mapping[str, str] | None = None  # shard file -> sha256 (pinned datasets)
    stream_digest: str | None = None
    tokens_consumed: int = 0
    not_eligible: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TokenizerInfo(Section):
    digest: str = ""
    vocab_size: int = 0


@dataclasses.dataclass(frozen=True)
class BundleInfo(Section):
    path: str = ""
    digest: str = ""
    missing_labels: tuple[str, ...] = ()
    max_per_task: int | None = None  # -1: every record


@dataclasses.dataclass(frozen=True)
class ErrorInfo(Section):
    message: str = ""
    traceback: str = ""


@dataclasses.dataclass(frozen=True)
class Record(Section):
    """A run's record as every reader sees it: validated against record.schema.json, typed, and frozen.

    The referee assembles the record's JSON in one place (harness/run.py, ``Referee.assemble``) and writes it
    once; everything that reads a record afterwards (the verdict, the summary, compare, ci, replay, the
    leaderboard) goes through here.
    """

    SECTIONS: ClassVar[dict[str, type[Section]]] = {
        "submission": Submission,
        "harness": Harness,
        "eligibility": Verdict,
        "run": RunInfo,
        "plan": PlanInfo,
        "data": DataInfo,
        "tokenizer": TokenizerInfo,
        "eval_bundle": BundleInfo,
        "metrics": Metrics,
        "error": ErrorInfo,
    }

    schema_version: int = SCHEMA_VERSION
    status: str = "failed"  # finished | failed | diverged | interrupted
    submission: Submission | None = None
    harness: Harness | None = None
    command: tuple[str, ...] = ()
    started_at: str = ""
    finished_at: str | None = None
    environment: Mapping = dataclasses.field(default_factory=_empty)
    profile: str | None = None
    fingerprint: Mapping | None = None
    calibration: Mapping = dataclasses.field(default_factory=_empty)
    eligibility: Verdict = Verdict()
    resumed: bool = False
    run: RunInfo | None = None
    plan: PlanInfo | None = None
    data: DataInfo | None = None
    tokenizer: TokenizerInfo | None = None
    eval_bundle: BundleInfo | None = None
    training_time_s: float = 0.0
    training_time_observed_s: float | None = None  # the timed steps as the referee saw them (None: not recorded)
    wall_time_s: float = 0.0
    phases: Mapping = dataclasses.field(default_factory=_empty)
    steps_completed: int = 0
    metrics: Metrics = Metrics()
    evals: tuple[Mapping, ...] = ()
    loss_curve: tuple[tuple[int, float], ...] = ()
    error: ErrorInfo | None = None
    config: Mapping | None = None  # what the command line and profile decided (harness/run.py Config)
    budgets: Mapping | None = None  # untimed phase -> {seconds, budget}
    watch: Mapping | None = None  # what the referee's file watch saw
    program: Mapping | None = None  # the exported model the referee evaluated: path, sha256
    checkpoint: str | None = None  # where an interrupted run can resume from

    @classmethod
    def from_json(cls, data: Mapping) -> Record:
        """Raises RecordError listing every way ``data`` breaks the schema."""
        errors = validate_record(data)
        if errors:
            raise RecordError("the record breaks harness/record.schema.json:\n  " + "\n  ".join(errors))
        return super().from_json(data)

    @classmethod
    def read(cls, path: Path) -> Record:
        data = read_json(path, "pass the record.json a run wrote", RecordError)
        try:
            return cls.from_json(data)
        except RecordError as exc:
            raise RecordError(f"{path}: {exc}") from None

    def loss_at(self, step: int) -> float | None:
        """The training loss the record kept for ``step`` (0-based), or None."""
        return next((loss for s, loss in self.loss_curve if s == step), None)


RECORD_FILE = "record.json"


def record_files(run_dir: Path) -> list[Path]:
    """The records of a run directory, oldest first: record.json, then record.resume-1.json, -2, ... (a resumed
    run writes its record beside the earlier ones: a record once written is never replaced)."""
    run_dir = Path(run_dir)
    resumed = sorted(run_dir.glob("record.resume-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [p for p in [run_dir / RECORD_FILE, *resumed] if p.is_file()]


def next_record_file(run_dir: Path) -> Path:
    """Where the next record of ``run_dir`` goes: record.json first, then record.resume-N.json."""
    found = record_files(run_dir)
    return Path(run_dir) / (RECORD_FILE if not found else f"record.resume-{len(found)}.json")


def write_record(path: Path, record: dict, reserved: bool = False) -> Path:
    """Validate ``record`` and write it atomically at ``path``; never over an existing record. ``reserved``: the
    referee chose ``path`` when the run started, when nothing was there; whatever is there now is not a record it
    wrote (a submission's file), and is replaced."""
    errors = validate_record(record)
    if errors:
        raise ValueError("refusing to write a record that breaks harness/record.schema.json:\n  " + "\n  ".join(errors))
    if Path(path).exists() and not reserved:
        raise FileExistsError(f"{path} already holds a record; a record once written is never replaced")
    atomic_write_json(path, record)
    return Path(path)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None  # not strip(): porcelain lines start with a space


def harness_digest() -> str:
    """sha256 over the harness and eval code files, so a record pins the referee even outside git."""
    digest = hashlib.sha256()
    for package in HARNESS_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(REPO_ROOT).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def harness_provenance(imported: list[str] = ()) -> dict:
    """Version, git commit, digest, and the dirty flag: uncommitted changes to the harness, eval and baseline
    code or to any other repository file the run imported (``imported``, relative paths), whose text is kept."""
    try:
        version = importlib.metadata.version("speedrun")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=all", "--", *HARNESS_PACKAGES, *imported)
    changed = sorted(line[3:].split(" -> ")[-1] for line in (status or "").splitlines())
    return {
        "version": version,
        "commit": commit,
        "dirty": None if status is None else bool(changed),
        "source_digest": harness_digest(),
        "changed": changed,
        "changed_sources": {path: _text(REPO_ROOT / path) for path in changed if (REPO_ROOT / path).is_file()},
    }


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return f"(not UTF-8: sha256 {sha256_file(path)})"


def record_digest_problem(run_dir: Path, name: str = RECORD_FILE) -> str | None:
    """Whether the record ``name`` in ``run_dir`` is the file the referee wrote: its sha256 against the
    ``record_written`` line the referee appended to events.jsonl after writing it."""
    run_dir = Path(run_dir)
    events = read_events(run_dir / "events.jsonl")
    written = [e["value"] for e in events if e.get("event") == "record_written" and isinstance(e.get("value"), dict)]
    mine = [w for w in written if w.get("file", RECORD_FILE) == name]
    if not mine:
        return f"{run_dir / 'events.jsonl'} has no record_written line for {name}: the referee did not write it"
    if mine[-1].get("sha256") != sha256_file(run_dir / name):
        return f"{run_dir / name} is not the record the referee wrote (its sha256 differs from events.jsonl)"
    return None


def environment() -> dict:
    env = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    import torch  # here: the leaderboard reads records without loading torch

    env["torch"] = torch.__version__
    env["cuda"] = torch.version.cuda
    return env
