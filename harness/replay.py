"""Replay a record: re-run its command from the submission source embedded in it, and compare the outcome.

    python -m harness.replay runs/20261124T020000Z_climbmix/record.json [--out DIR] [--json FILE]

The embedded sources are written to a fresh folder (each checked against its recorded digest), the
recorded command is run again with that folder as the submission (under torchrun when the record used
several ranks), and the two records are compared: what must be identical (steps, tokens, the data stream
digest, data, tokenizer and eval-bundle digests, submission digest) and what may drift within a tolerance
(losses and evals, which depend on floating-point order on some hardware). Exit status 0 when the replay
reproduces the record, 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.fileio import sha256_bytes
from harness.record import validate_record
from harness.run import parse_args

EXACT = {
    "steps": ("steps_completed",),
    "tokens": ("data", "tokens_consumed"),
    "data stream digest": ("data", "stream_digest"),
    "data digest": ("data", "digest"),
    "tokenizer digest": ("tokenizer", "digest"),
    "eval bundle digest": ("eval_bundle", "digest"),
    "submission digest": ("submission", "source_digest"),
    "status": ("status",),
}
# Relative tolerances for metrics that depend on floating-point summation order.
APPROX = {"final loss": (("metrics", "final_loss"), 1e-3), "val_bpb": (("metrics", "val_bpb"), 1e-3)}


def dig(record: dict, path: tuple[str, ...]):
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def materialize_sources(record: dict, folder: Path) -> Path:
    """Write the record's submission files into ``folder/<name>``, verifying each against its digest."""
    sub = record["submission"]
    if sub is None:
        raise SystemExit("cannot replay: the record has no submission (the run stopped before loading it)")
    missing = sorted(set(sub["files"]) - set(sub["sources"]))
    if missing:
        raise SystemExit(f"cannot replay: the record embeds no text for {', '.join(missing)} (binary files)")
    target = folder / sub["name"]
    for rel, text in sub["sources"].items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts or Path(sub["name"]).name != sub["name"]:
            raise SystemExit(f"cannot replay: embedded source {sub['name']}/{rel} would be written outside {folder}")
        data = text.encode("utf-8")
        if sha256_bytes(data) != sub["files"][rel]:
            raise SystemExit(f"cannot replay: embedded source {rel} does not match its recorded digest")
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_bytes(data)
    return target


def replay_command(record: dict, submission_dir: Path, out: Path) -> list[str]:
    """The recorded harness arguments, with the submission and output directory replaced."""
    argv = record["command"][3:]  # [python, -m, harness.run, *argv]
    original = parse_args(argv)
    rebuilt, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--out":
            skip = True
            continue
        if token.startswith("--out=") or token == "--resume":
            continue
        rebuilt.append(str(submission_dir) if token == original.submission else token)
    rebuilt += ["--out", str(out)]
    world_size = record["run"]["world_size"] if record.get("run") else 1
    if world_size > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
                "-m", "harness.run", *rebuilt]  # fmt: skip
    return [sys.executable, "-m", "harness.run", *rebuilt]


def compare(old: dict, new: dict) -> list[dict]:
    rows = []
    for name, path in EXACT.items():
        a, b = dig(old, path), dig(new, path)
        rows.append({"what": name, "recorded": a, "replayed": b, "rule": "identical", "ok": a == b})
    for name, (path, rel) in APPROX.items():
        a, b = dig(old, path), dig(new, path)
        ok = (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= rel * max(abs(a), 1e-12))
        rows.append({"what": name, "recorded": a, "replayed": b, "rule": f"within {rel:.0e} relative", "ok": ok})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.replay", description=__doc__.split("\n")[0])
    p.add_argument("record", type=Path, help="a record.json (or the run directory holding it)")
    p.add_argument("--out", type=Path, help="directory for the replayed run (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the comparison as JSON here")
    args = p.parse_args(argv)
    path = args.record
    try:
        if path.is_dir():
            path = path / "record.json"
        old = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        p.error(f"cannot read record {path}: {exc}")
    errors = validate_record(old)
    if errors:
        shown = "\n  ".join(errors[:10]) + ("\n  ..." if len(errors) > 10 else "")
        p.error(f"{path} is not a valid run record (harness/record.schema.json):\n  {shown}")
    with tempfile.TemporaryDirectory(prefix="speedrun-replay-") as tmp:
        submission_dir = materialize_sources(old, Path(tmp))
        out = args.out or Path(tmp) / "run"
        cmd = replay_command(old, submission_dir, out)
        print("+ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=False)
        try:
            new = json.loads((out / "record.json").read_text())
        except (OSError, json.JSONDecodeError):
            print(f"the replayed run wrote no record in {out}", file=sys.stderr)
            return 1
    rows = compare(old, new)
    print("\n| what | recorded | replayed | rule | ok |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['recorded']} | {r['replayed']} | {r['rule']} | {'yes' if r['ok'] else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    reproduced = all(r["ok"] for r in rows)
    print("\nreplay reproduces the record" if reproduced else "\nreplay DIFFERS from the record")
    return 0 if reproduced else 1


if __name__ == "__main__":
    sys.exit(main())
