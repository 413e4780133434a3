"""Command line of the leaderboard.

    python -m leaderboard add RUN_DIR... [--name N] [--description D] [--contributors "a, b"] [--track dev]
    python -m leaderboard render

``add`` validates the runs (one directory per seed, as the harness wrote them) and files them as one entry,
then regenerates the board; a refused set prints every failed check of every run and exits with status 1.
``render`` regenerates README.md's table, dev/README.md, each entry's stats.md and index.html.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.fileio import file_lock
from leaderboard.build import render
from leaderboard.store import PACKAGE_DIR, TRACKS, LeaderboardError, RejectedRuns, add_entry


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
