"""Scaffold a new submission from an existing one: its hooks file and a writeup template, nothing else.

    python -m harness.new my_idea --from submissions/climbmix      # creates submissions/my_idea/

Then edit ``submissions/my_idea/submission.py`` (delete the hooks you do not change: the baseline answers
them) and describe the change in ``submissions/my_idea/README.md``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from harness.plugins import HOOKS_FILE, SubmissionError, load_submission

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
README_TEMPLATE = """\
# {name}

Built on `{source}`.

## What changes
One paragraph: which hooks this submission overrides and what each change does.

## Why it should be faster
The idea and its evidence (ablations, papers, logs).

## Results
Paste the generated `stats.md` from `python -m leaderboard add` here: runs, training time, CORE, val_bpb.

## Reproduce
```bash
torchrun --standalone --nproc_per_node=8 -m harness.run submissions/{name} --profile 8xh100 --seed 0
```

## Contributors
Your name(s).
"""


def scaffold(name: str, source: str, root: Path = Path("submissions")) -> Path:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"name {name!r}: use lower-case letters, digits, '-' or '_', starting with a letter")
    target = root / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; pick another name or delete it first")
    origin = load_submission(source)  # checks that the source is itself a valid submission
    hooks = (origin.path / HOOKS_FILE).read_text(encoding="utf-8")
    target.mkdir(parents=True)
    (target / HOOKS_FILE).write_text(hooks, encoding="utf-8")
    (target / "README.md").write_text(README_TEMPLATE.format(name=name, source=source), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.new", description=__doc__.split("\n")[0])
    p.add_argument("name", help="the new submission's folder name under --root")
    p.add_argument("--from", dest="source", default="submissions/climbmix", help="submission to start from")
    p.add_argument("--root", type=Path, default=Path("submissions"), help="where submissions live")
    args = p.parse_args(argv)
    try:
        target = scaffold(args.name, args.source, args.root)
    except (ValueError, FileExistsError, SubmissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {target}/{HOOKS_FILE} and {target}/README.md")
    print(f"next: edit them, then `python -m harness.run {target}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
