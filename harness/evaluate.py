"""The referee's evals: val_bpb and CORE of a run's exported model, in a process that runs no submission code.

    python -m harness.evaluate RUN_DIR --val-file VAL.parquet --bundle DIR --json OUT.json   # by hand, any time

The referee (harness/run.py) starts this module itself (``EvalProcess``: before training, to wait for its
arguments until the worker has exited), through ``isolated_command``:
Python in isolated mode without site hooks (``-I -S``: no PYTHON* variables, no .pth files, no sitecustomize) and
with a fresh bytecode cache (``-X pycache_prefix``), so neither the environment nor a file the worker dropped
can change what runs here. It loads the exported program (harness/export.py: ATen operators only, plain tensors
only) and the harness's own eval code, calibrates the device, and writes one JSON result.

val_bpb is computed on the profile's fixed validation rows (the first ``--val-tokens`` of the validation shard,
packed at ``--seq-len``), which the worker never saw; CORE follows evals/core.py on every task file of the bundle.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import select
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


# What the evals import: loaded by main() once the arguments are good, or ahead of time by a process the referee
# starts early (EvalProcess). Keep it in step with main's imports; a module missing here costs time, not results.
EVAL_MODULES = (
    "torch",
    "torch._export.serde.serialize",  # what torch.export.load imports on first use
    "evals.bpb",
    "evals.bundle",
    "evals.core",
    "harness.export",
    "harness.fileio",
    "harness.loader",
    "harness.profiles",
    "harness.tokenizer",
)


# glibc keeps the memory the evals free instead of handing it back to the kernel after every forward: CORE's rows
# change length from batch to batch, and faulting the pages in again took a fifth of CORE's time on a 2-core VM
# (26.3 s -> 21.4 s, the same scores). Only the eval process, whose time no result depends on, gets it.
EVAL_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456"


def isolated_command(args: list[str], pycache: Path, write_bytecode: bool = True) -> list[str]:
    """``python -m harness.evaluate ARGS`` isolated from the environment, site hooks and existing bytecode."""
    paths = [str(REPO_ROOT), *dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))]
    boot = f"import sys; sys.path[:0] = {paths!r}; from harness.evaluate import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-I", "-S", *([] if write_bytecode else ["-B"]), "-X", f"pycache_prefix={pycache}", "-c",
            boot, *args]  # fmt: skip


def bytecode_cached(pycache: Path) -> bool:
    """Whether ``pycache`` holds up-to-date bytecode of the eval code and of torch (not on a machine's first run,
    nor after an edit of the eval code)."""
    sources = [REPO_ROOT / (name.replace(".", "/") + ".py") for name in EVAL_MODULES if name.startswith(("evals.",
               "harness."))] + [Path(sysconfig.get_paths()["purelib"]) / "torch" / "__init__.py"]  # fmt: skip
    for source in sources:
        cached = (
            pycache / str(source.resolve().parent).lstrip(os.sep) / f"{source.stem}.{sys.implementation.cache_tag}.pyc"
        )
        try:
            if cached.stat().st_mtime < source.stat().st_mtime:
                return False
        except OSError:
            return False
    return True


class EvalProcess:
    """The referee's end of its eval process, started when the run starts so that its interpreter start and
    imports overlap the probe and the data setup instead of adding to the run's wall time:

        evals = EvalProcess(pycache, out / "evals" / "stderr.txt")   # imports, then waits (no file opened)
        if evals.writes_bytecode: evals.wait_ready()                 # a first run: before any submission code
        ...the probe, the setup...
        evals.wait_ready()
        ...training...
        evals.go([program, "--sha256", digest, ...])                 # the arguments of main(), once training ended

    While it waits it runs no eval and opens no evaluation file, so the file watches are not disturbed; it
    refuses tracing, so the worker cannot reach into it. The installation check covers its bytecode cache while
    submission code runs, so it must not write there meanwhile: with the cache up to date it reads bytecode only
    (``-B``); otherwise (a machine's first run, an edit of the eval code) it writes the cache and the referee
    waits for it before starting any submission code.
    """

    def __init__(self, pycache: Path, stderr: Path):
        self.stderr = stderr
        stderr.parent.mkdir(parents=True, exist_ok=True)
        self.writes_bytecode = not bytecode_cached(pycache)
        ready_read, ready_write = os.pipe()
        tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), EVAL_MALLOC]))
        cmd = isolated_command(["--wait", str(ready_write)], pycache, write_bytecode=self.writes_bytecode)
        with open(stderr, "w") as log:  # a file, not a pipe: a chatty eval never blocks on it
            # A session of its own: a Ctrl-C reaches the referee, which ends this process itself (finish_evals).
            env = {**os.environ, "GLIBC_TUNABLES": tunables}
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=log, pass_fds=(ready_write,),
                                         start_new_session=True, env=env)  # fmt: skip
        os.close(ready_write)
        self.ready = os.fdopen(ready_read, "rb")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float) -> None:
        """Block until the process has imported the eval code; OSError (naming its stderr) if it died instead."""
        if self.ready.closed:  # said so already
            return
        readable, _, _ = select.select([self.ready], [], [], timeout)
        said = self.ready.read(5) if readable else b""
        self.ready.close()
        if said != b"ready":
            self.kill()
            why = "did not start" if readable else f"was not ready after {timeout:.0f} s"
            raise OSError(f"the referee's eval process {why}: {self.stderr_text()[-2000:] or 'no message'}")

    def go(self, args: list[str]) -> None:
        try:
            self.proc.stdin.write((json.dumps(args) + "\n").encode())
            self.proc.stdin.close()
        except OSError:  # it died while waiting: its exit status and stderr say why (the referee reports them)
            pass

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")


def wait_for_arguments(ready_fd: int) -> list[str] | None:
    """A process started early by the referee: import the eval code, say so on ``ready_fd``, then wait for the
    arguments of main() (one JSON list on stdin). None when the referee ends it without any."""
    from harness.watch import refuse_tracing  # here, not at the top: see main()

    refuse_tracing()  # the training worker runs while this process waits
    for name in EVAL_MODULES:
        importlib.import_module(name)
    os.write(ready_fd, b"ready")
    os.close(ready_fd)
    line = sys.stdin.readline()
    return json.loads(line) if line.strip() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, help="run directory, its model/ folder, or the model.pt2 program")
    p.add_argument("--sha256", help="the program's digest as the referee recorded it (default: trust the file)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the run directory's)")
    p.add_argument("--tokenizer-digest", help="refuse a tokenizer with another digest")
    p.add_argument("--val-file", type=Path, help="validation shard: compute val_bpb on it")
    p.add_argument("--val-tokens", type=int, default=16 * 1024, help="validation tokens (the profile's budget)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per validation row (the profile's seq_len)")
    p.add_argument("--bundle", type=Path, help="CORE eval bundle folder: compute CORE on it")
    p.add_argument("--bundle-digest", help="refuse a bundle with another digest")
    p.add_argument("--max-per-task", type=int, default=None, help="CORE records per task (default: every record)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    p.add_argument("--calibrate", action="store_true", help="measure matmul and memory throughput first")
    p.add_argument("--dump", type=Path, help="write CORE's per-record results to this .jsonl")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    for name in ("val_tokens", "seq_len", "max_per_task"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} {value}: pass a positive number")
    if args.val_file is not None and not args.val_file.is_file():
        p.error(f"--val-file {args.val_file}: no such file; pass the dataset's validation shard")
    args.program = program_path(args.model)
    if not args.program.is_file():
        p.error(f"no exported model at {args.program}; pass a run directory that harness.run wrote (its --out)")
    return args


def program_path(model: Path) -> Path:
    """The program file of a run directory, its model/ folder, or the file itself."""
    from harness.checkpoint import MODEL_DIR, PROGRAM_FILE  # here, not at the top: see main()

    if (model / MODEL_DIR).is_dir():
        model = model / MODEL_DIR
    return model / PROGRAM_FILE if model.is_dir() else model


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--wait"]:  # started early by the referee (EvalProcess); the arguments come later
        argv = wait_for_arguments(int(argv[1]))
        if argv is None:
            return 0
    args = parse_args(argv)
    # Imported once the arguments are good: --help and usage errors answer without loading torch.
    import torch

    from evals.bpb import evaluate_bpb
    from evals.bundle import BundleError, load_bundle
    from evals.core import DEFAULT_BATCH_TOKENS, evaluate_core
    from harness.export import ExportError, load_program
    from harness.fileio import atomic_write_json, atomic_write_text, sha256_file
    from harness.loader import validation_rows
    from harness.profiles import calibrate
    from harness.tokenizer import Tokenizer

    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    program_path = args.program
    tokenizer_path = args.tokenizer or program_path.parent.parent / "tokenizer.json"
    result: dict = {}
    try:
        if args.calibrate:
            result["calibration"] = calibrate(torch.device(device))
        tokenizer = Tokenizer.load(tokenizer_path)
        if args.tokenizer_digest and tokenizer.digest != args.tokenizer_digest:
            raise ExportError(f"{tokenizer_path} is not the run's tokenizer (its digest changed)")
        program = load_program(program_path, args.sha256 or sha256_file(program_path), device)
        result["program"] = {"min_len": program.min_len, "max_len": program.max_len}
        with torch.no_grad():
            if args.val_file is not None:
                rows = validation_rows(args.val_file, tokenizer, args.val_tokens, args.seq_len)
                batch = max(1, DEFAULT_BATCH_TOKENS[torch.device(device).type] // args.seq_len)
                result["val_bpb"] = evaluate_bpb(program, rows, tokenizer.token_bytes(), batch, device)
                result["val_rows_sha256"] = hashlib.sha256(rows.numpy().tobytes()).hexdigest()  # which tokens
                print(f"val_bpb {result['val_bpb']:.6f} ({rows.shape[0]} rows of {args.seq_len} tokens)", flush=True)
            if args.bundle is not None:
                bundle = load_bundle(args.bundle)
                if args.bundle_digest and bundle.digest != args.bundle_digest:
                    raise BundleError(f"the eval bundle at {args.bundle} changed since the run started")
                dump: list | None = [] if args.dump else None
                piped = None if sys.stderr.isatty() else lambda line: print(line, flush=True)  # a line per task
                core = evaluate_core(
                    program,
                    tokenizer,
                    bundle,
                    args.max_per_task or -1,
                    device,
                    progress=sys.stderr.isatty(),
                    dump=dump,
                    max_len=program.max_len,
                    log=piped,
                )
                print(core.table(), flush=True)
                result["core"] = core.to_dict()
                if args.dump:
                    atomic_write_text(args.dump, "".join(json.dumps(row) + "\n" for row in dump))
    except (ExportError, BundleError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
