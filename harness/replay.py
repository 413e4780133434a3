"""Replay a record: re-run its command from the submission source embedded in it, and compare the outcome.

    python -m harness.replay runs/20261124T020000Z_climbmix/record.json [--out DIR] [--json FILE]

    new = replay(record, out)          # the replayed run's record (ReplayError when there is none)
    rows = compare(record, new)        # one row per rule: what, recorded, replayed, rule, ok

The embedded sources are written to a fresh folder (each checked against its recorded digest), the recorded
command is run again with that folder as the submission (under torchrun when the record used several ranks), and
the two records are compared by the rules below. Paths of the recording machine (``--data-dir``,
``--eval-bundle``) and ``--wandb`` are left out: the replaying machine's environment supplies them
(``SPEEDRUN_DATA_DIR``, ``SPEEDRUN_EVAL_BUNDLE``), and the digests compared below say whether they hold the same
files. Exit status 0 when the replay reproduces the record, 1 when it does not. ``python -m leaderboard verify``
replays an entry's runs this way.

The rules (leaderboard/README.md states them for contributors):

- identical: steps, tokens, the data stream digest, the data, tokenizer, eval-bundle and submission digests, the
  status;
- the loss curve: every step both records hold, within LOSS_RTOL (relative; by device: CPU training repeats to
  float noise, GPU kernels reduce in a varying order); the final loss likewise; val_bpb within 1e-3 relative;
- CORE within CORE_ATOL (absolute), or absent from both;
- training time, normalised by the two machines' matmul calibration: the record's time may not be shorter than
  the replay's, scaled by calibration(replay) / calibration(record) (the factor bounded to CALIBRATION_BOUNDS),
  by more than TIME_TOLERANCE of the profile. A record slower than its replay is not suspect: only time claimed
  and not reproduced is.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.fileio import sha256_bytes
from harness.markdown import markdown_table
from harness.record import Record, RecordError, Submission
from harness.run import parse_args

EXACT = {
    "steps": lambda r: r.steps_completed,
    "tokens": lambda r: r.data and r.data.tokens_consumed,
    "data stream digest": lambda r: r.data and r.data.stream_digest,
    "data digest": lambda r: r.data and r.data.digest,
    "tokenizer digest": lambda r: r.tokenizer and r.tokenizer.digest,
    "eval bundle digest": lambda r: r.eval_bundle and r.eval_bundle.digest,
    "submission digest": lambda r: r.submission and r.submission.source_digest,
    "status": lambda r: r.status,
}
# Relative tolerances for metrics that depend on floating-point summation order.
APPROX = {"val_bpb": (lambda r: r.metrics.val_bpb, 1e-3)}
LOSS_RTOL = {"cpu": 1e-3, "cuda": 2e-2}  # per point of the loss curve and the final loss, by the record's device
CORE_ATOL = 0.015  # about 3 sigma of CORE between repeats of one command (docs/spec/core.md, Noise)
# How far (relative) a record's time may fall short of its calibration-normalised replay. 8xh100: the referee's
# own clock tolerance (2%) plus 1% for nodes that calibrate alike but train differently; gpu: any single GPU;
# cpu: shared machines whose load changes between runs, where only a gross understatement is caught.
TIME_TOLERANCE = {"8xh100": 0.03, "gpu": 0.10, "cpu": 0.75}
CALIBRATION_BOUNDS = (0.8, 1.25)  # a node credited as at most 25% faster or slower than the replaying one
# Options whose value names something on the recording machine: the replaying machine supplies its own.
LOCAL_OPTIONS = ("--out", "--data-dir", "--eval-bundle", "--wandb")


class ReplayError(Exception):
    """The record cannot be replayed, or the replay wrote no record; the message says why."""


def materialize_sources(sub: Submission | None, folder: Path) -> Path:
    """Write a record's submission files into ``folder/<name>``, verifying each against its digest."""
    if sub is None:
        raise SystemExit("cannot replay: the record has no submission (the run stopped before loading it)")
    missing = sorted(set(sub.files) - set(sub.sources))
    if missing:
        raise SystemExit(f"cannot replay: the record embeds no text for {', '.join(missing)} (binary files)")
    target = folder / sub.name
    for rel, text in sub.sources.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts or Path(sub.name).name != sub.name:
            raise SystemExit(f"cannot replay: embedded source {sub.name}/{rel} would be written outside {folder}")
        data = text.encode("utf-8")
        if sha256_bytes(data) != sub.files[rel]:
            raise SystemExit(f"cannot replay: embedded source {rel} does not match its recorded digest")
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_bytes(data)
    return target


def replay_command(record: Record, submission_dir: Path, out: Path) -> list[str]:
    """The recorded harness arguments, with the submission and output directory replaced and the recording
    machine's paths (LOCAL_OPTIONS) and --resume left out."""
    argv = list(record.command[3:])  # [python, -m, harness.run, *argv]
    original = parse_args(argv)
    rebuilt, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in LOCAL_OPTIONS:
            skip = True
            continue
        if token.startswith(tuple(f"{option}=" for option in LOCAL_OPTIONS)) or token == "--resume":
            continue
        rebuilt.append(str(submission_dir) if token == original.submission else token)
    rebuilt += ["--out", str(out)]
    world_size = record.run.world_size if record.run else 1
    if world_size > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
                "-m", "harness.run", *rebuilt]  # fmt: skip
    return [sys.executable, "-m", "harness.run", *rebuilt]


def replay(record: Record, out: Path, *, log: Path | None = None, cwd: Path | None = None) -> Record:
    """Run ``record``'s command again from its embedded sources into ``out`` (which must not exist yet) and return
    the replayed run's record. The run's output goes to ``log`` (else to this process's stdout and stderr)."""
    with tempfile.TemporaryDirectory(prefix="speedrun-replay-") as tmp:
        submission_dir = materialize_sources(record.submission, Path(tmp))
        cmd = replay_command(record, submission_dir, out)
        print("+ " + " ".join(cmd), flush=True)
        if log is None:
            subprocess.run(cmd, check=False, cwd=cwd)
        else:
            with open(log, "w", encoding="utf-8") as f:
                subprocess.run(cmd, check=False, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if not (out / "record.json").is_file():
        raise ReplayError(f"the replayed run wrote no record in {out}; see {log or 'its output above'}")
    try:
        return Record.read(out / "record.json")
    except RecordError as e:
        raise ReplayError(f"the replayed run's record is not valid ({e}); see {log or 'its output above'}") from None


def _number(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def sci(x: float) -> str:
    """1e-3 rather than Python's 1e-03."""
    return f"{x:.0e}".replace("e-0", "e-")


def _row(what: str, recorded, replayed, rule: str, ok: bool) -> dict:
    return {"what": what, "recorded": recorded, "replayed": replayed, "rule": rule, "ok": bool(ok)}


def _close(a, b, rtol: float) -> bool:
    a, b = _number(a), _number(b)
    return a is not None and b is not None and abs(a - b) <= rtol * max(abs(a), 1e-12)


def loss_rows(old: Record, new: Record) -> list[dict]:
    device = (old.run and old.run.device) or "cpu"
    rtol = LOSS_RTOL.get(device, LOSS_RTOL["cuda"])
    replayed = dict(new.loss_curve)
    worst, where = 0.0, None
    for step, loss in old.loss_curve:
        other = replayed.get(step)
        a, b = _number(loss), _number(other)
        if a is None or b is None:  # a point missing on one side, or not a number: as far off as it gets
            worst, where = math.inf, step
            break
        error = abs(a - b) / max(abs(a), 1e-12)
        if error > worst:
            worst, where = error, step
    curve = _row(
        "loss curve",
        f"{len(old.loss_curve)} points",
        "identical" if worst == 0 else f"worst at step {where}: {worst:.2e} relative",
        f"every point within {sci(rtol)} relative",
        worst <= rtol,
    )
    a, b = old.metrics.final_loss, new.metrics.final_loss
    final = _row("final loss", a, b, f"within {sci(rtol)} relative", (a is None and b is None) or _close(a, b, rtol))
    return [curve, final]


def core_row(old: Record, new: Record) -> dict:
    a, b = _number(old.metrics.core), _number(new.metrics.core)
    ok = (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= CORE_ATOL)
    return _row("CORE", old.metrics.core, new.metrics.core, f"within {CORE_ATOL}", ok)


def time_row(old: Record, new: Record) -> dict:
    """The recorded training time against the replay's, normalised by the machines' matmul calibration."""
    rel = TIME_TOLERANCE.get(old.profile, TIME_TOLERANCE["gpu"])
    recorded, replayed = _number(old.training_time_s), _number(new.training_time_s)
    c_old = _number(old.calibration.get("matmul_tflops"))
    c_new = _number(new.calibration.get("matmul_tflops"))
    low, high = CALIBRATION_BOUNDS
    factor = min(max(c_new / c_old, low), high) if c_old and c_new else 1.0
    rule = f"at least {1 - rel:.2f} x the replay's x calibration factor {factor:.3f}"
    if recorded is None or replayed is None:
        return _row("training time", recorded, replayed, rule, False)
    expected = replayed * factor
    ok = recorded >= expected * (1 - rel)
    return _row("training time", round(recorded, 3), f"{replayed:.3f} (normalised {expected:.3f})", rule, ok)


def compare(old: Record, new: Record) -> list[dict]:
    rows = []
    for name, read in EXACT.items():
        a, b = read(old), read(new)
        rows.append(_row(name, a, b, "identical", a == b))
    rows += loss_rows(old, new)
    for name, (read, rel) in APPROX.items():
        a, b = read(old), read(new)
        rows.append(_row(name, a, b, f"within {sci(rel)} relative", (a is None and b is None) or _close(a, b, rel)))
    rows.append(core_row(old, new))
    rows.append(time_row(old, new))
    return rows


def table(rows: list[dict]) -> str:
    cells = [[r["what"], r["recorded"], r["replayed"], r["rule"], "yes" if r["ok"] else "NO"] for r in rows]
    return markdown_table(["what", "recorded", "replayed", "rule", "ok"], cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.replay", description=__doc__.split("\n")[0])
    p.add_argument("record", type=Path, help="a record.json (or the run directory holding it)")
    p.add_argument("--out", type=Path, help="directory for the replayed run (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the comparison as JSON here")
    args = p.parse_args(argv)
    try:  # is_dir() too raises OSError, for a name longer than the file system allows
        path = args.record / "record.json" if args.record.is_dir() else args.record
        old = Record.read(path)
    except (OSError, RecordError, RecursionError) as exc:
        p.error(f"cannot replay {args.record}: {exc}")
    with tempfile.TemporaryDirectory(prefix="speedrun-replay-out-") as tmp:
        try:
            new = replay(old, args.out or Path(tmp) / "run")
        except ReplayError as e:
            print(e, file=sys.stderr)
            return 1
    rows = compare(old, new)
    print("\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    reproduced = all(r["ok"] for r in rows)
    print("\nreplay reproduces the record" if reproduced else "\nreplay DIFFERS from the record")
    return 0 if reproduced else 1


if __name__ == "__main__":
    sys.exit(main())
