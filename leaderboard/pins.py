"""The record track's committed pins (``leaderboard/track.json``) and a record's data, tokenizer and eval bundle
checked against them.

    pins = read_pins(root)                      # {"data": {...}, "tokenizer": {...}, "eval_bundle": {...}}
    problem = data_problem(record, pins["data"])     # a typed Record; "" when its data is the pinned data

The pins are written by hand, in a reviewed commit, from the project's own manifests: the climbmix catalog
(``harness/catalog/climbmix.json``: the shards' sha256), the tokenizer's parameters (``harness/tokenizer.py``, the
record profile's vocabulary) and its digest once it is trained, and the CORE bundle's manifest
(``evals/manifest.json``). ``tests/test_leaderboard_pins.py`` checks that they still agree with those files. A pin
that is not complete yet (a shard, the tokenizer or a bundle file without a digest) makes ``add`` refuse every
record-track run, saying what is missing: the first entry never pins anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.fileio import read_json
from harness.record import Record

SECTIONS = ("data", "tokenizer", "eval_bundle")
TRACK_FILE = "track.json"
SCHEMA = json.loads(Path(__file__).with_name("track.schema.json").read_text())  # what the checks below read


class PinError(Exception):
    """track.json is missing or malformed; the message names the file and the fix."""


def read_pins(root: Path) -> dict[str, dict]:
    """The record track's pins from ``root/track.json``, checked against ``track.schema.json`` for the fields the
    checks read."""
    path = Path(root) / TRACK_FILE
    if not path.exists():
        raise PinError(f"{path} is missing; restore it from git (it pins the record track's data)")
    pins = read_json(path, "restore it from git", PinError, SCHEMA)["record"]["pins"]
    return {section: pins[section] for section in SECTIONS}


# ---------------------------------------------------------------------------------------------------------------
# The digests the referee writes, re-derived from their parts (the formulas of harness/data/verify.py and
# evals/bundle.py; tests/test_leaderboard_pins.py checks both against the real code)


def data_digest(dataset: str, shards: dict[str, str], val_name: str) -> str:
    """The record's ``data.digest`` from the shards it lists: the training shards in order, then the validation
    shard (harness.data.verify's dataset digest)."""
    payload = {
        "name": dataset,
        "train": [[name, shards[name]] for name in sorted(shards) if name != val_name],
        "val": [val_name, shards[val_name]],
    }
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def bundle_digest(files: dict[str, str]) -> str:
    """The record's ``eval_bundle.digest`` from the digests of the files the bundle was read from
    (evals.bundle's bundle digest)."""
    lines = "".join(f"{rel} {digest}\n" for rel, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# A record against the pins: "" when it matches, else every reason, and the fix


def data_problem(record: Record, pin: dict) -> str:
    data = record.data
    if data is None:
        return "the record has no data digest (the run stopped during setup); re-run it"
    if not data.pinned:
        return "the data is not pinned (data.pinned is false); run on the pinned dataset"
    if data.dataset != pin["dataset"]:
        return f"dataset {data.dataset!r}, but the record track is pinned to {pin['dataset']!r}"
    if not pin["digests"]:
        return (
            f"the record track pins no {pin['dataset']} shard digest yet ({pin.get('from', 'the catalog')} commits "
            f"none): until a maintainer commits them (python -m harness.data pin {pin['dataset']}, then into "
            "leaderboard/track.json) no record-track entry can be filed"
        )
    shards = dict(data.shards or {})
    val_name = pin["filename"].format(index=pin["val_shard"])
    if val_name not in shards:
        return f"the record lists no digest of the validation shard {val_name} (data.shards); re-run it"
    problems = []
    unpinned = sorted(name for name in shards if name not in pin["digests"])
    if unpinned:
        problems.append(f"shards without a pinned digest: {', '.join(unpinned[:5])}" + (" ..." * (len(unpinned) > 5)))
    differ = sorted(name for name in shards if name in pin["digests"] and shards[name] != pin["digests"][name])
    if differ:
        problems.append(f"shards whose sha256 differs from the pinned one: {', '.join(differ[:5])}")
    if not problems and data.digest != data_digest(data.dataset, shards, val_name):
        problems.append("data.digest is not the digest of the shards the record lists: the record was edited")
    return "; ".join(problems) + ("; run on the track's data (leaderboard/track.json)" if problems else "")


def tokenizer_problem(record: Record, pin: dict) -> str:
    tokenizer = record.tokenizer
    if tokenizer is None:
        return "the record has no tokenizer digest (the run stopped during setup); re-run it"
    if tokenizer.vocab_size != pin["vocab_size"]:
        return f"vocabulary {tokenizer.vocab_size}, but the record track's tokenizer has {pin['vocab_size']}"
    if pin.get("digest") is None:
        return (
            "the record track has no tokenizer digest yet: the first real tokenizer (the recipe in "
            "leaderboard/track.json) has not been trained; until a maintainer commits its digest there, no "
            "record-track entry can be filed"
        )
    if tokenizer.digest != pin["digest"]:
        return (
            f"tokenizer digest {tokenizer.digest[:12]}... differs from the track's {pin['digest'][:12]}... "
            "(leaderboard/track.json); train it with the track's recipe on the track's data"
        )
    return ""


def bundle_problem(record: Record, pin: dict) -> str:
    digest = record.eval_bundle.digest if record.eval_bundle else None
    if not digest:
        return "the record has no eval bundle digest (run with CORE on the full bundle)"
    unknown = sorted(Path(rel).name for rel, d in pin["files"].items() if d is None)
    if unknown:
        return (
            f"the record track's eval bundle pin has no digest for {', '.join(unknown)} "
            f"({pin.get('from', 'the bundle')} was computed from a partial copy): until a maintainer commits them "
            "into leaderboard/track.json, no record-track entry can be filed"
        )
    expected = bundle_digest(pin["files"])
    if digest != expected:
        return (
            f"eval bundle digest {digest[:12]}... differs from the track's full bundle {expected[:12]}... "
            "(leaderboard/track.json); run with the full CORE bundle"
        )
    return ""


PROBLEMS = {"data": data_problem, "tokenizer": tokenizer_problem, "eval_bundle": bundle_problem}
