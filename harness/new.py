"""Scaffold a new submission from an existing one: its hooks file and a writeup template, nothing else.

    python -m harness.new my_idea --from submissions/climbmix      # creates submissions/my_idea/
    python -m harness.new my_idea --from baselines/nanochat        # start from the baseline's every hook

Then edit ``submissions/my_idea/submission.py`` (delete the hooks you do not change: the baseline answers
them) and describe the change in ``submissions/my_idea/README.md``. CONTRIBUTING.md has the whole path from
idea to record.

The copy is the source's hooks file with two edits: its module docstring becomes one for the new submission
(the source's would describe the wrong thing), and the baseline's ``@hookimpl(trylast=True)`` becomes
``@hookimpl`` (a submission's hooks are asked first; trylast is for the fallback baseline only).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from harness.plugins import HOOKS_FILE, SubmissionError, load_submission

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
HOOKS_DOCSTRING = '''\
"""{name}: replace this line with what the submission changes and why.

Started from {source}. Implement only the hooks you change (harness/hookspecs.py); the nanochat baseline
answers the others.

    python -m harness.run {target} --profile cpu --max-steps 10 --no-core     # a quick CPU check
"""
'''
README_TEMPLATE = """\
# {name}

Built on `{source}`.

## What changes
One paragraph: which hooks this submission overrides and what each change does.

## Why it should be faster
The idea and its evidence (ablations, papers, logs).

## A/B against {source}
Paste `compare.md` from `python -m harness.compare {source} {target} ...` (CONTRIBUTING.md, steps 4-5).

## Results
Paste the generated `stats.md` from `python -m leaderboard add` here: runs, training time, CORE, val_bpb.

## Reproduce
```bash
torchrun --standalone --nproc_per_node=8 -m harness.run {target} --profile 8xh100 --seed 0
```

## Contributors
Your name(s).
"""


def hooks_file_text(source_text: str, name: str, source: str, target: Path) -> str:
    """The source's hooks file with a docstring for the new submission and plain @hookimpl decorators."""
    docstring = HOOKS_DOCSTRING.format(name=name, source=source, target=target.as_posix())
    body = source_text
    first = ast.parse(source_text).body[:1]
    if first and isinstance(first[0], ast.Expr) and isinstance(getattr(first[0].value, "value", None), str):
        body = "".join(source_text.splitlines(keepends=True)[first[0].end_lineno :])
    else:
        body = "\n" + body
    return docstring + re.sub(r"@hookimpl\(trylast=True\)", "@hookimpl", body)


def scaffold(name: str, source: str, root: Path = Path("submissions")) -> Path:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"name {name!r}: use 1-64 lower-case letters, digits, '-' or '_', starting with a letter (e.g. my_idea)"
        )
    target = root / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; pick another name or delete it first")
    origin = load_submission(source)  # checks that the source is itself a valid submission
    text = (origin.path / HOOKS_FILE).read_text(encoding="utf-8")
    target.mkdir(parents=True)
    (target / HOOKS_FILE).write_text(hooks_file_text(text, name, source, target), encoding="utf-8")
    readme = README_TEMPLATE.format(name=name, source=source, target=target.as_posix())
    (target / "README.md").write_text(readme, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.new", description=__doc__.split("\n")[0])
    p.add_argument("name", help="the new submission's folder name under --root")
    p.add_argument(
        "--from",
        dest="source",
        default="submissions/climbmix",
        help="submission to start from: a folder or an entry-point name (default: %(default)s)",
    )
    p.add_argument("--root", type=Path, default=Path("submissions"), help="where submissions live")
    args = p.parse_args(argv)
    try:
        target = scaffold(args.name, args.source, args.root)
    except (ValueError, OSError, SubmissionError) as exc:  # FileExistsError is an OSError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {target}/{HOOKS_FILE} and {target}/README.md")
    print("next (CONTRIBUTING.md):")
    print(f"  1. edit {target}/{HOOKS_FILE} (keep only the hooks you change) and {target}/README.md")
    print(f"  2. python -m harness.run {target} --profile cpu --max-steps 10 --no-core")
    print(f"  3. python -m harness.compare {args.source} {target} --profile cpu --depth 2 --max-steps 10 --no-core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
