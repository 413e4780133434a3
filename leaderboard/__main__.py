"""Command line of the leaderboard.

    python -m leaderboard add RUN_DIR... [--name N] [--description D] [--contributors "a, b"] [--track dev]
    python -m leaderboard verify ENTRY [--runs K | --seed S ...] [--keep DIR]
    python -m leaderboard render

``add`` validates the runs (one directory per seed, as the harness wrote them) and files them as one entry,
then regenerates the board; a refused set prints every failed check of every run and exits with status 1.
``verify`` re-runs K of an entry's runs on this machine from the sources embedded in their records
(leaderboard/verify.py), records the outcome in the entry's verification.json and regenerates the board; it
exits with status 1, naming every difference, when a replay does not reproduce its record.
``render`` regenerates README.md's table, dev/README.md, each entry's stats.md and index.html.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.fileio import file_lock
from leaderboard.build import render
from leaderboard.store import PACKAGE_DIR, TRACKS, LeaderboardError, RejectedRuns, add_entry
from leaderboard.verify import main as verify_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=PACKAGE_DIR, help="leaderboard folder (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="validate runs and file them as one entry")
    add.add_argument("runs", nargs="+", type=Path, help="run directories (record.json + events.jsonl), one per seed")
    add.add_argument("--track", choices=TRACKS, default="record", help="record (default) or dev (development board)")
    add.add_argument("--name", help="entry name, letters/digits/._- (default: the submission's name)")
    add.add_argument("--description", help="one line for the table (default: the writeup's first line)")
    add.add_argument("--contributors", default="", help="comma-separated names")
    add.add_argument("--writeup", type=Path, help="markdown writeup (default: the submission's README.md)")
    verify = sub.add_parser("verify", help="re-run an entry's runs here and compare them with their records")
    verify.add_argument("entry", help="entry folder, folder name (2026-04-01_name) or name")
    verify.add_argument("--runs", type=int, default=1, help="how many runs to re-run, chosen at random (default 1)")
    verify.add_argument("--seed", type=int, action="append", default=[], help="re-run this seed's run (repeatable)")
    verify.add_argument("--keep", type=Path, help="keep the replayed runs in this folder (default: a temporary one)")
    sub.add_parser("render", help="regenerate the tables, stats.md files and index.html")
    args = parser.parse_args(argv)

    try:
        if args.command == "add":
            entry = add_entry(
                args.runs,
                root=args.root,
                track=args.track,
                name=args.name,
                description=args.description,
                contributors=args.contributors.split(","),
                writeup=args.writeup,
            )
            print(f"filed {len(entry.runs)} runs as {entry.path}")
        status = 0
        if args.command == "verify":
            status = verify_main(args.root, args.entry, args.runs, args.seed, args.keep)
        with file_lock(args.root / ".add"):  # a concurrent add must not file an entry halfway through a render
            for path in render(args.root):
                print(f"wrote {path}")
    except RejectedRuns as e:
        print(f"refused: {len(e.checks)} run(s) checked, fix the failures below and add again\n{e}", file=sys.stderr)
        return 1
    except LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # --root or a run path the file system refuses (a name too long, no permission)
        print(f"error: {e.filename}: {e.strerror}; check the paths given", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
