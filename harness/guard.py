"""The worker's guards: clear errors from submission hooks, clean stops on signals, a disk-space check.

value = call_hook(submission, "build_model", run=run)   # a failure names the file, the hook and the fix
stop = StopSignal().install()                           # SIGINT/SIGTERM stop at the next step boundary
"""

from __future__ import annotations

import inspect
import shutil
import signal
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.plugins import Submission, SubmissionError

FIXES = {
    "select_dataset": "return one of the catalog names (python -m harness.data list)",
    "build_model": "fix the model construction; it must return a torch.nn.Module on run.device",
    "plan_training": "return a harness.hookspecs.Plan whose batch divides into device_batch * seq_len * world_size",
    "build_optimizer": "return one torch.optim.Optimizer over every trainable parameter",
    "build_schedule": "return a callable schedule(step) -> dict",
    "train_step": "fix the forward/backward code; it must return the mean loss as a tensor",
}


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived: the run stops at a step boundary, checkpoints, and records `interrupted`."""

    agreed = False  # True when every rank stopped at the same step boundary (StopSignal.raise_if_stopping)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower()
    )


def implementing_file(submission: Submission, tb) -> str:
    """The plugin file the failing frame belongs to: the submission's own, else the baseline's, else the harness."""
    plugin_files = {
        str(Path(inspect.getfile(plugin)).resolve()): name
        for name, plugin in submission.pm.list_name_plugin()
        if inspect.ismodule(plugin)
    }
    found = None
    for frame, _ in traceback.walk_tb(tb):
        path = str(Path(frame.f_code.co_filename).resolve())
        if path in plugin_files or path.startswith(str(submission.path)):
            found = path
    return found or str(submission.path / "submission.py")


def hook_file(submission: Submission, hook: str) -> str:
    """The file whose implementation answers ``hook``: the submission's when it overrides it, else the baseline's."""
    impls = getattr(submission.hook, hook).get_hookimpls()
    for impl in reversed(impls):  # pluggy calls the last registered (the submission) first
        if inspect.ismodule(impl.plugin) and impl.plugin is not None:
            return str(Path(inspect.getfile(impl.plugin)).resolve())
    return str(submission.path / "submission.py")


def call_hook(submission: Submission, name: str, expect: type | None = None, **kwargs):
    """Call a hook; an exception inside it, or an answer that is not an ``expect``, becomes a SubmissionError
    naming the file, the hook and the fix."""
    try:
        result = getattr(submission.hook, name)(**kwargs)
    except (SubmissionError, RunInterrupted, KeyboardInterrupt):
        raise
    except SystemExit as exc:
        where = implementing_file(submission, exc.__traceback__)
        raise SubmissionError(
            f"{where}: hook {name} called sys.exit({exc.code!r}); a submission must not end the "
            f"process. Fix: return from the hook (raise an exception to report an error)."
        ) from exc
    except Exception as exc:
        where = implementing_file(submission, exc.__traceback__)
        if is_out_of_memory(exc):
            fix = "the model does not fit in memory: lower --depth, or device_batch in plan_training"
        else:
            fix = FIXES.get(name, "fix the hook")
        raise SubmissionError(f"{where}: hook {name} raised {type(exc).__name__}: {exc}. Fix: {fix}.") from exc
    if expect is not None and not isinstance(result, expect):
        wanted = f"{expect.__module__}.{expect.__qualname__}"
        raise SubmissionError(f"{hook_file(submission, name)}: {name} returned {type(result).__name__}, not a {wanted}")
    return result


class StopSignal:
    """Turns SIGINT/SIGTERM into RunInterrupted: at once outside training, at a step boundary inside it.

    While ``deferred()`` is active (the training loop), a signal is only noted; the loop calls ``raise_if_stopping``
    after each step is complete and recorded, and with several ranks all of them agree on the answer, so they
    stop at the same step and can save one checkpoint together.
    """

    def __init__(self):
        self.received: str | None = None
        self.deferring = False

    def install(self) -> StopSignal:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        if not self.deferring:
            raise RunInterrupted(f"received {self.received}")

    @contextmanager
    def deferred(self):
        """Note signals instead of raising them, so a step and its bookkeeping are never cut in half."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def raise_if_stopping(self, agree) -> None:
        """At a step boundary: raise RunInterrupted (agreed) when any rank received a signal.

        ``agree(flag) -> bool`` combines this rank's flag with every other rank's (any of them); every rank must
        call this at the same boundary.
        """
        if agree(self.received is not None):
            why = f"received {self.received}" if self.received else "another rank received a stop signal"
            exc = RunInterrupted(why)
            exc.agreed = True
            raise exc

    @staticmethod
    def uninstall() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def check_free_space(path: Path, needed_bytes: int) -> None:
    """Refuse to start when the output directory's disk cannot hold the checkpoints and record."""
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise OSError(
            f"{path} has {free / 1e9:.2f} GB free but the run needs about {needed_bytes / 1e9:.2f} GB for its "
            f"checkpoints; free some space or pass --out DIR on a larger disk"
        )
