"""Fuzz tests (issue 9): malformed input to every parser gives one clear error, never a traceback from deep inside.

    pytest tests/test_fuzz_parsers.py

Each parser is fed, through its public entry point, random bytes, cut-off files, non-UTF-8 bytes, empty files,
valid JSON or YAML of the wrong shape, and real files with one field deleted or replaced by a random value
(wrong types, huge and negative numbers). The claim for each: it either returns something usable, or raises the
one error type its module documents (BundleError, CoreError, ManifestError, CheckpointError, LeaderboardError,
ValueError; SystemExit(2) with the usage for a command line), with a message that names the file (or the
argument) and what is wrong. Example counts are small so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers_evals import BUNDLE
from helpers_leaderboard import new_board, sample_record, write_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evals.bundle import BundleError, TaskSpec, load_bundle, load_manifest, read_baselines, read_config
from evals.core import CoreError, load_records, render_prompts
from harness import data as data_cli
from harness import evaluate as evaluate_cli
from harness import new as new_cli
from harness import replay as replay_cli
from harness.checkpoint import CheckpointError, _read_dir
from harness.clock import read_events
from harness.data import CATALOG_DIR, DatasetSpec, ManifestError, parse_shards, read_lock
from harness.export import ExportError, load_program
from harness.fileio import sha256_file
from harness.record import Submission, validate_record
from harness.run import parse_args
from harness.tokenizer import Tokenizer
from leaderboard import __main__ as leaderboard_cli
from leaderboard import store

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------
# Strategies: random JSON values, corrupted bytes, one-field mutations of a valid document

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def corruptions(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, a cut-off copy, a copy with non-UTF-8 bytes inside, an empty file, or JSON of any shape."""
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.integers(0, len(valid)).map(lambda n: valid[:n] + b"\xff\xfe\xc3" + valid[n:]),
        st.just(b""),
        json_values.map(lambda v: json.dumps(v).encode()),
    )


DELETE = object()


def leaf_paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of nested objects and lists (the document itself excluded)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    paths = []
    for key, value in items:
        paths.append((*prefix, key))
        paths += leaf_paths(value, (*prefix, key))
    return paths


def mutations(valid: dict) -> st.SearchStrategy[dict]:
    """``valid`` with one field (at any depth) deleted or replaced by a random JSON value."""
    paths = leaf_paths(valid)

    def apply(path: tuple, value: object) -> dict:
        doc = json.loads(json.dumps(valid))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return doc

    return st.builds(apply, st.sampled_from(paths), st.one_of(st.just(DELETE), json_values))


def raises_naming(error_type: type[BaseException], *names: object):
    """Context manager: ``error_type`` whose message contains every one of ``names``."""
    return pytest.raises(error_type, match="(?s)" + "".join(f"(?=.*{re.escape(str(n))})" for n in names))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder per module: hypothesis reuses it for every example (function-scoped tmp_path would not reset)."""
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------
# Run records: harness.record.validate_record, leaderboard.store.load_run, harness.replay


@FUZZ
@given(json_values)
def test_validate_record_lists_errors_for_any_json_value_and_never_raises(value):
    errors = validate_record(value)
    assert errors and all(isinstance(e, str) and ": " in e for e in errors)


@FUZZ
@given(mutations(sample_record(1)))
def test_validate_record_names_the_field_of_a_mutated_record(record):
    errors = validate_record(record)
    assert isinstance(errors, list) and all(isinstance(e, str) for e in errors)


@FUZZ
@given(content=corruptions(json.dumps(sample_record(1)).encode()))
def test_a_damaged_record_json_is_refused_by_the_leaderboard_naming_the_file(scratch, content):
    run = write_run(scratch / "run", sample_record(1))
    (run / "record.json").write_bytes(content)
    try:
        loaded = store.load_run(run)
    except store.LeaderboardError as e:
        assert str(run / "record.json") in str(e)
    else:
        assert isinstance(loaded.data, dict)


@FEW
@given(record=mutations(sample_record(1)))
def test_the_leaderboard_refuses_a_mutated_record_with_its_checks_never_a_crash(record):
    with tempfile.TemporaryDirectory() as tmp:
        board = new_board(Path(tmp) / "board")
        run = write_run(Path(tmp) / "run", sample_record(1))
        (run / "record.json").write_text(json.dumps(record))
        try:
            store.add_entry([run], root=board, track="dev", name="fuzz")
        except store.RejectedRuns as e:
            assert str(run) in str(e)
        except store.LeaderboardError as e:
            assert str(e)  # a reason that is not a per-run check (a bad name, a missing writeup)


@FUZZ
@given(content=corruptions(json.dumps(sample_record(1)).encode()))
def test_replay_refuses_a_damaged_record_with_exit_2_naming_the_file(scratch, content):
    path = scratch / "record.json"
    path.write_bytes(content)
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        replay_cli.main([str(path)])
    assert exit_info.value.code == 2
    assert str(path) in stderr.getvalue() and "usage:" in stderr.getvalue()


def test_replay_of_a_missing_record_exits_2_naming_the_path(tmp_path):
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        replay_cli.main([str(tmp_path / "nope.json")])
    assert exit_info.value.code == 2 and "nope.json" in stderr.getvalue()


def test_replay_of_a_name_too_long_for_the_file_system_exits_2_naming_it(tmp_path):
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        replay_cli.main([str(tmp_path / LONG_NAME)])
    assert exit_info.value.code == 2 and LONG_NAME in stderr.getvalue() and "File name too long" in stderr.getvalue()


def test_replay_refuses_embedded_sources_that_would_escape_its_folder(tmp_path):
    record = sample_record(1)
    record["submission"]["sources"] = {"../../escaped.py": "x = 1\n"}
    record["submission"]["files"] = {"../../escaped.py": "0" * 64}
    with pytest.raises(SystemExit, match="outside"):
        replay_cli.materialize_sources(Submission.from_json(record["submission"]), tmp_path / "a" / "b")
    assert not (tmp_path / "escaped.py").exists()


# ------------------------------------------------------------------------------------------------
# events.jsonl: harness.clock.read_events and leaderboard.store.read_events

EVENTS = [{"time": 1.0e9 + i, "t": float(i), "event": "train_loss", "key": str(i), "value": 3.0} for i in range(4)]
EVENT_LINES = [json.dumps(e).encode() for e in EVENTS]
bad_lines = st.one_of(
    st.binary(min_size=1, max_size=60).filter(lambda b: b.strip() and b"\n" not in b and b"\r" not in b),
    st.sampled_from([b"\xff\xfe", b'{"time": 1.0e9, "ev', b"[1, 2]", b"null", b'"text"', b"{" * 5000]),
)


def _valid_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (ValueError, RecursionError):
        return False


@FUZZ
@given(position=st.integers(0, len(EVENT_LINES) - 2), line=bad_lines)
def test_a_damaged_middle_event_line_is_refused_naming_the_file_and_line(scratch, position, line):
    if _valid_object(line):
        return  # random bytes that happen to be a JSON object are a valid event
    path = scratch / "events.jsonl"
    lines = [*EVENT_LINES]
    lines[position] = line
    path.write_bytes(b"\n".join(lines) + b"\n")
    with raises_naming(ValueError, path, f"line {position + 1}"):
        read_events(path)
    with raises_naming(store.LeaderboardError, path, f"line {position + 1}"):
        store.read_events(path)


@FUZZ
@given(line=bad_lines)
def test_a_cut_off_last_event_line_is_skipped_and_the_rest_is_kept(scratch, line):
    path = scratch / "events.jsonl"
    path.write_bytes(b"\n".join([*EVENT_LINES, line]))
    if _parses(line) and not _valid_object(line):  # a whole line, but not an event: damage, not a cut-off
        with raises_naming(ValueError, path, f"line {len(EVENT_LINES) + 1}"):
            read_events(path)
        with raises_naming(store.LeaderboardError, path):
            store.read_events(path)
    else:
        expected = EVENTS + ([json.loads(line)] if _valid_object(line) else [])
        assert read_events(path) == expected and store.read_events(path) == expected


def _parses(line: bytes) -> bool:
    try:
        json.loads(line.decode("utf-8"))
        return True
    except (ValueError, RecursionError):
        return False


@FUZZ
@given(content=st.binary(max_size=400))
def test_random_bytes_as_an_event_log_give_events_or_a_value_error_naming_the_file(scratch, content):
    path = scratch / "events.jsonl"
    path.write_bytes(content)
    try:
        events = read_events(path)
    except ValueError as e:
        assert str(path) in str(e)
    else:
        assert all(isinstance(e, dict) for e in events)


# ------------------------------------------------------------------------------------------------
# Manifests: the dataset catalog, the bundle manifest, checkpoint meta.json, the tokenizer file

SMOKE_MANIFEST = (CATALOG_DIR / "smoke.json").read_bytes()


def _check_spec_or_manifest_error(path: Path) -> None:
    try:
        spec = DatasetSpec.load(path)
    except ManifestError as e:
        assert str(path) in str(e)
    else:
        assert spec.shard_name(spec.val_shard) != spec.shard_name((spec.val_shard + 1) % spec.num_shards) or (
            spec.num_shards == 1
        )


@FUZZ
@given(content=corruptions(SMOKE_MANIFEST))
def test_a_damaged_dataset_manifest_raises_manifest_error_naming_the_file(scratch, content):
    path = scratch / "smoke.json"
    path.write_bytes(content)
    _check_spec_or_manifest_error(path)


@FUZZ
@given(manifest=mutations(json.loads(SMOKE_MANIFEST)))
def test_a_dataset_manifest_with_a_wrong_field_raises_manifest_error_naming_the_file(scratch, manifest):
    path = scratch / "smoke.json"
    path.write_text(json.dumps(manifest))
    _check_spec_or_manifest_error(path)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"num_shards": -3}, "num_shards"),
        ({"num_shards": 10**18}, "num_shards"),
        ({"val_shard": 9}, "val_shard"),
        ({"filename": "shard_{}.parquet"}, "filename"),
        ({"filename": "same.parquet"}, "filename"),
        ({"source": {"type": "ftp"}}, "source.type"),
        ({"digests": {"shard_00000.parquet": 7}}, "digests"),
        ({"num_shards": True}, "num_shards"),
    ],
)
def test_each_bad_manifest_field_is_named_in_the_error(tmp_path, change, named):
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps({**json.loads(SMOKE_MANIFEST), **change}))
    with raises_naming(ManifestError, path, named):
        DatasetSpec.load(path)


@FUZZ
@given(content=corruptions(b'{"dataset": "smoke", "digests": {"shard_00000.parquet": "' + b"a" * 64 + b'"}}'))
def test_a_damaged_first_seen_lock_file_raises_manifest_error_naming_it(scratch, content):
    path = scratch / "smoke" / "digests.lock.json"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    try:
        digests = read_lock("smoke", scratch)
    except ManifestError as e:
        assert str(path) in str(e)
    else:
        assert all(isinstance(d, str) for d in digests.values())


@FUZZ
@given(content=corruptions((Path(__file__).parents[1] / "evals" / "manifest.json").read_bytes()))
def test_a_damaged_bundle_manifest_raises_bundle_error_naming_the_file(scratch, content):
    path = scratch / "manifest.json"
    path.write_bytes(content)
    try:
        files = load_manifest(path)
    except BundleError as e:
        assert str(path) in str(e)
    else:
        assert all(d is None or len(d) == 64 for d in files.values())


def _tokenizer_file(path: Path) -> bytes:
    Tokenizer({bytes([b]): b for b in range(256)} | {b"th": 256, b"he": 257}).save(path)
    return path.read_bytes()


TOKENIZER_JSON = json.dumps(Tokenizer({bytes([b]): b for b in range(256)} | {b"th": 256}).to_json()).encode()


@FUZZ
@given(content=corruptions(TOKENIZER_JSON))
def test_a_damaged_tokenizer_file_raises_value_error_naming_it(scratch, content):
    path = scratch / "tokenizer.json"
    path.write_bytes(content)
    try:
        tok = Tokenizer.load(path)
    except ValueError as e:
        assert str(path) in str(e) and "delete it to retrain" in str(e)
    else:
        assert tok.decode(tok.encode("the theory")) == "the theory"


@FUZZ
@given(doc=mutations(json.loads(TOKENIZER_JSON) | {"ranks": json.loads(TOKENIZER_JSON)["ranks"][250:]}))
def test_a_tokenizer_file_with_a_wrong_field_raises_value_error_naming_it(scratch, doc):
    # The mutated document keeps only the last ranks, so any survivor lacks byte tokens and must be refused.
    path = scratch / "tokenizer.json"
    path.write_text(json.dumps(doc))
    with raises_naming(ValueError, path):
        Tokenizer.load(path)


def test_a_tokenizer_with_an_invalid_split_pattern_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(json.loads(TOKENIZER_JSON) | {"pattern": "(unclosed"}))
    with raises_naming(ValueError, path):
        Tokenizer.load(path)


def _checkpoint(folder: Path, meta: dict) -> Path:
    """A model checkpoint folder whose meta.json is ``meta`` plus the digest of a real tokenizer file."""
    folder.mkdir(parents=True, exist_ok=True)
    _tokenizer_file(folder / "tokenizer.json")
    files = {"tokenizer.json": sha256_file(folder / "tokenizer.json")}
    (folder / "meta.json").write_text(json.dumps({**meta, "files": files} if "files" not in meta else meta))
    return folder


MODEL_META = {"kind": "training", "step": 3}


@FUZZ
@given(content=corruptions(json.dumps({**MODEL_META, "files": {}}).encode()))
def test_a_damaged_checkpoint_meta_json_raises_checkpoint_error_naming_it(scratch, content):
    folder = _checkpoint(scratch / "model", MODEL_META)
    (folder / "meta.json").write_bytes(content)
    try:
        _read_dir(folder)
    except CheckpointError as exc:
        assert str(folder) in str(exc)


@FEW
@given(content=st.binary(max_size=2048))
def test_a_damaged_exported_program_raises_export_error_naming_it(scratch, content):
    path = scratch / "model.pt2"
    path.write_bytes(content)
    with raises_naming(ExportError, path):
        load_program(path, sha256_file(path))


@pytest.mark.parametrize("files", [[], {"../outside": "0" * 64}, {"tokenizer.json": 5}, "tokenizer.json"])
def test_checkpoint_meta_files_must_map_plain_file_names_to_digests(tmp_path, files):
    folder = _checkpoint(tmp_path / "model", {**MODEL_META, "files": files})
    with raises_naming(CheckpointError, folder / "meta.json", "'files'"):
        _read_dir(folder)


# ------------------------------------------------------------------------------------------------
# core.yaml and eval_meta_data.csv, below and above the digest check

needs_bundle = pytest.mark.skipif(not (BUNDLE / "core.yaml").is_file(), reason=f"no bundle at {BUNDLE}")
CORE_YAML = (BUNDLE / "core.yaml").read_bytes() if (BUNDLE / "core.yaml").is_file() else b"icl_tasks: []"
META_CSV = (BUNDLE / "eval_meta_data.csv").read_bytes() if (BUNDLE / "core.yaml").is_file() else b"a,b"
yaml_like = st.one_of(
    st.text(alphabet=st.sampled_from(list("abc:-[]{}\"'&*!|>%@`#, \n\t0129.")), max_size=120).map(str.encode),
    st.sampled_from([b"2024-13-45", b"icl_tasks: 2024-13-45", b"- [", b"icl_tasks:\n  - label: [x]", b"&a [*a]"]),
)


@needs_bundle
@FUZZ
@given(content=st.one_of(corruptions(CORE_YAML), yaml_like))
def test_a_damaged_core_yaml_raises_bundle_error_naming_the_file(scratch, content):
    path = scratch / "core.yaml"
    path.write_bytes(content)
    try:
        entries = read_config(path)
    except BundleError as e:
        assert str(path) in str(e)
    else:
        assert all(isinstance(e["continuation_delimiter"], str) for e in entries)


@needs_bundle
@FUZZ
@given(config=mutations(yaml.safe_load(CORE_YAML)))
def test_a_core_yaml_with_a_wrong_field_names_the_file_and_the_field(scratch, config):
    path = scratch / "core.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        entries = read_config(path)
    except BundleError as e:
        assert str(path) in str(e)
    else:
        assert all(isinstance(e["num_fewshot"][0], int) and e["num_fewshot"][0] >= 0 for e in entries)


@needs_bundle
@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("num_fewshot", ["ten"], "num_fewshot"),
        ("num_fewshot", [-1], "num_fewshot"),
        ("num_fewshot", 10, "num_fewshot"),
        ("icl_task_type", "essay", "icl_task_type"),
        ("label", None, "'label'"),
        ("dataset_uri", "../../etc/passwd", "dataset_uri"),
        ("continuation_delimiter", 7, "continuation_delimiter"),
    ],
)
def test_each_bad_core_yaml_field_is_named_with_its_task(tmp_path, field, value, named):
    config = yaml.safe_load(CORE_YAML)
    config["icl_tasks"][3][field] = value
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump(config))
    with raises_naming(BundleError, path, named):
        read_config(path)


@needs_bundle
@FUZZ
@given(content=corruptions(META_CSV))
def test_a_damaged_eval_meta_data_csv_raises_bundle_error_naming_the_file(scratch, content):
    path = scratch / "eval_meta_data.csv"
    path.write_bytes(content)
    try:
        baselines = read_baselines(path)
    except BundleError as e:
        assert str(path) in str(e)
    else:
        assert all(0 <= b < 100 for b in baselines.values())


@needs_bundle
@pytest.mark.parametrize("value", ["abc", "nan", "inf", "100", "-5", "1e400"])
def test_a_bad_random_baseline_is_named_with_its_line(tmp_path, value):
    header, row = list(csv.reader(io.StringIO(META_CSV.decode())))[:2]
    row[header.index("Random baseline")] = value
    out = io.StringIO()
    csv.writer(out).writerows([header, row])
    path = tmp_path / "eval_meta_data.csv"
    path.write_text(out.getvalue())
    with raises_naming(BundleError, path, "line 2", "Random baseline"):
        read_baselines(path)


@needs_bundle
def test_a_changed_core_yaml_in_a_bundle_is_refused_by_digest_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "bundle"
    root.mkdir()
    shutil.copyfile(BUNDLE / "eval_meta_data.csv", root / "eval_meta_data.csv")
    (root / "core.yaml").write_bytes(CORE_YAML[: len(CORE_YAML) // 2] + b"\xff: [")
    with raises_naming(BundleError, root / "core.yaml", "has changed"):
        load_bundle(root)


@needs_bundle
@pytest.mark.parametrize("content", [b"{not json", b"[]", b"\xff\xfe"])
def test_a_damaged_first_seen_digest_file_is_named_with_the_fix(tmp_path, monkeypatch, content):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "eval_bundle.first_seen.json").write_bytes(content)
    with raises_naming(BundleError, "eval_bundle.first_seen.json", "delete it"):
        load_bundle(BUNDLE)


# ------------------------------------------------------------------------------------------------
# jsonl task files: every line checked against its task type's record format

VALID = {
    "multiple_choice": {"query": "Q?", "choices": [" yes", " no"], "gold": 1},
    "schema": {"context_options": ["A", "B"], "continuation": "ends.", "gold": 0},
    "language_modeling": {"context": "The sky is", "continuation": " blue", "category": "ignored"},
}


def _task(path: Path, task_type: str) -> TaskSpec:
    return TaskSpec("fuzz", task_type, 2, " ", "fuzz.jsonl", path, 25.0)


def _check_records_or_core_error(path: Path, task_type: str) -> None:
    try:
        records = load_records(_task(path, task_type))
    except CoreError as e:
        assert str(path) in str(e) and "line " in str(e)
    else:  # whatever loads can be rendered, with the others as few-shot examples
        for r in records:
            render_prompts(task_type, r.data, " ", [o.data for o in records if o is not r])


@FUZZ
@given(
    task_type=st.sampled_from(sorted(VALID)),
    line=st.one_of(st.binary(min_size=1, max_size=80), json_values.map(lambda v: json.dumps(v).encode())),
    position=st.integers(0, 3),
)
def test_a_malformed_task_line_raises_core_error_naming_file_and_line(scratch, task_type, line, position):
    lines = [json.dumps(VALID[task_type]).encode()] * 4
    lines[position] = line.replace(b"\n", b" ").replace(b"\r", b" ") or b"x"
    path = scratch / f"{task_type}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _check_records_or_core_error(path, task_type)


@FUZZ
@given(data=st.data(), task_type=st.sampled_from(sorted(VALID)))
def test_a_task_record_with_a_wrong_field_raises_core_error_naming_the_field(scratch, data, task_type):
    # One field deleted or replaced, plus perhaps fields of the other types' formats, of any value.
    other_fields = sorted({key for fields in VALID.values() for key in fields} - set(VALID[task_type]))
    extra = data.draw(st.dictionaries(st.sampled_from(other_fields), json_values, max_size=2))
    record = data.draw(mutations(VALID[task_type])) | extra
    path = scratch / f"{task_type}.jsonl"
    path.write_text(json.dumps(VALID[task_type]) + "\n" + json.dumps(record) + "\n")
    _check_records_or_core_error(path, task_type)


@pytest.mark.parametrize(
    ("task_type", "change", "named"),
    [
        ("multiple_choice", {"gold": 2}, "'gold' is 2"),
        ("multiple_choice", {"gold": -1}, "'gold' is -1"),
        ("multiple_choice", {"gold": True}, "'gold'"),
        ("multiple_choice", {"choices": "yes"}, "'choices'"),
        ("multiple_choice", {"choices": [1, 2]}, "'choices'"),
        ("multiple_choice", {"query": 5}, "'query'"),
        ("multiple_choice", {"gold": None}, "'gold'"),
        ("schema", {"context_options": []}, "'context_options'"),
        ("schema", {"gold": 10**30}, "'gold'"),
        ("language_modeling", {"continuation": None}, "'continuation'"),
        ("language_modeling", {"context": ["a"]}, "'context'"),
    ],
)
def test_each_bad_record_field_is_named_with_the_file_and_line(tmp_path, task_type, change, named):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(VALID[task_type]) + "\n" + json.dumps({**VALID[task_type], **change}) + "\n")
    with raises_naming(CoreError, path, "line 2", named):
        load_records(_task(path, task_type))


def test_fields_of_other_task_types_are_ignored(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({**VALID["language_modeling"], "choices": [1], "gold": "x"}) + "\n")
    assert load_records(_task(path, "language_modeling"))[0].data["choices"] == [1]


def test_a_non_utf8_task_line_is_named_by_its_line_number(tmp_path):
    path = tmp_path / "task.jsonl"
    good = json.dumps(VALID["schema"]).encode()
    path.write_bytes(b"\n".join([good, good, b'{"context_options": ["\xff"]}', good]) + b"\n")
    with raises_naming(CoreError, path, "line 3", "UTF-8"):
        load_records(_task(path, "schema"))


# ------------------------------------------------------------------------------------------------
# Command lines: random argv either parses or exits 2 with the usage; nothing else escapes

argv_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


LONG_NAME = "x" * 300  # longer than a file name may be: Path.is_file() raises OSError instead of returning False


def argv_lists(flags: list[str]) -> st.SearchStrategy[list[str]]:
    numbers = st.integers(-(10**25), 10**25).map(str)
    return st.lists(st.one_of(st.sampled_from([*flags, LONG_NAME]), argv_text, numbers), max_size=7)


@pytest.fixture(scope="module")
def empty_cwd(tmp_path_factory) -> Path:
    """An empty working folder for the command lines: no checkpoint, record or submission to find there."""
    return tmp_path_factory.mktemp("cli")


def _parse_or_usage_error(parse, argv: list[str]) -> object:
    """``parse(argv)``; a SystemExit must be 0 (help) or 2 with the usage on stderr."""
    stderr, stdout = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            return parse(argv)
    except SystemExit as e:
        assert e.code in (0, 2), f"{argv}: exit {e.code}"
        if e.code == 2:
            assert "usage:" in stderr.getvalue() and "error:" in stderr.getvalue()
        return e


RUN_FLAGS = ["submissions/x", "--profile", "auto", "cpu", "--depth", "--seed", "--out", "--eval-bundle",
             "--max-per-task", "--max-steps", "--data-dir", "--train-shards", "--checkpoint-every", "--resume",
             "--no-core", "--wandb", "-h", "--", "-1", "0"]  # fmt: skip


@FUZZ
@given(argv=argv_lists(RUN_FLAGS))
def test_harness_run_arguments_parse_or_exit_2_with_the_usage(argv):
    _parse_or_usage_error(parse_args, argv)


DATA_FLAGS = ["download", "verify", "pin", "build-smoke", "list", "smoke", "climbmix", "--shards", "0-3", "all",
              "--workers", "--retries", "--data-dir", "-h"]  # fmt: skip


@FUZZ
@given(argv=argv_lists(DATA_FLAGS))
def test_harness_data_arguments_parse_or_exit_2_with_the_usage(argv):
    _parse_or_usage_error(data_cli.build_parser().parse_args, argv)


@FUZZ
@given(text=st.one_of(argv_text, st.from_regex(r"[0-9 ,\-]{1,20}", fullmatch=True)))
def test_shard_ranges_parse_or_raise_value_error_quoting_them(text):
    spec = DatasetSpec.load(CATALOG_DIR / "climbmix.json")
    try:
        shards = parse_shards(text, spec)
    except ValueError as e:
        assert "shard" in str(e)
    else:
        assert all(0 <= i < spec.num_shards for i in shards)


def test_a_huge_shard_range_is_refused_at_once_without_building_it():
    spec = DatasetSpec.load(CATALOG_DIR / "climbmix.json")
    with pytest.raises(ValueError, match="out of range"):
        parse_shards("0-99999999999999", spec)
    with pytest.raises(ValueError, match="backwards"):
        parse_shards("9-3", spec)


EVALUATE_FLAGS = ["ckpt", "--sha256", "--tokenizer", "--val-file", "--val-tokens", "--seq-len", "--bundle",
                  "--max-per-task", "--device", "cpu", "--calibrate", "--dump", "--json", "-1", "0", "-h"]  # fmt: skip


@FUZZ
@given(argv=argv_lists(EVALUATE_FLAGS))
def test_evaluate_command_line_exits_2_with_the_usage_without_a_model(empty_cwd, argv):
    # No exported model exists in the empty folder, so every run of the command ends in a usage error.
    with contextlib.chdir(empty_cwd):
        result = _parse_or_usage_error(evaluate_cli.main, ["ckpt", *argv])
    assert isinstance(result, SystemExit)


REPLAY_FLAGS = ["record.json", ".", "--out", "--json", "-h"]


@FUZZ
@given(argv=argv_lists(REPLAY_FLAGS))
def test_replay_command_line_exits_2_with_the_usage_without_a_record(empty_cwd, argv):
    with contextlib.chdir(empty_cwd):
        result = _parse_or_usage_error(replay_cli.main, argv)
    assert isinstance(result, SystemExit)


LEADERBOARD_FLAGS = ["add", "render", "run1", "--track", "dev", "record", "--name", "--description",
                     "--contributors", "--writeup", "--root", "-h"]  # fmt: skip


@FUZZ
@given(argv=argv_lists(LEADERBOARD_FLAGS))
def test_leaderboard_command_line_returns_a_status_or_exits_2_with_the_usage(empty_cwd, argv):
    with contextlib.chdir(empty_cwd):
        result = _parse_or_usage_error(leaderboard_cli.main, ["--root", "board", *argv])
    assert isinstance(result, SystemExit) or result in (0, 1)


def test_leaderboard_with_a_root_too_long_for_the_file_system_says_so_and_exits_1(empty_cwd):
    stderr = io.StringIO()
    with contextlib.chdir(empty_cwd), contextlib.redirect_stderr(stderr):
        assert leaderboard_cli.main(["--root", LONG_NAME, "render"]) == 1
    assert "File name too long" in stderr.getvalue()


NEW_FLAGS = ["my_idea", "--from", "submissions/climbmix", "--root", "-h", "UPPER", "a" * 70]


@FUZZ
@given(argv=argv_lists(NEW_FLAGS).filter(lambda argv: LONG_NAME not in argv))
def test_harness_new_command_line_returns_a_status_or_exits_2_with_the_usage(empty_cwd, argv):
    with contextlib.chdir(empty_cwd):
        result = _parse_or_usage_error(new_cli.main, argv)
    assert isinstance(result, SystemExit) or result in (0, 2)


def test_harness_new_with_a_root_too_long_for_the_file_system_exits_2(empty_cwd):
    with contextlib.chdir(empty_cwd):
        assert _parse_or_usage_error(new_cli.main, ["my_idea", "--root", LONG_NAME]) == 2
