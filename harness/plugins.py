"""Load a submission as a pluggy plugin, with the reference baseline behind it.

    sub = load_submission("submissions/climbmix")      # a folder holding submission.py
    sub = load_submission("my_entry_point_name")       # or a name in the `speedrun.submissions` group
    model = sub.hook.build_model(run=run)

Registration order decides who answers: the submission is asked first, then the reference baseline
(``baselines/nanochat``), then the harness defaults (``harness/defaults.py``). A submission therefore
implements only the hooks it changes. Misspelt hooks, hooks with unknown arguments and hook functions
that forgot their ``@hookimpl`` fail here, at load, before any data or model work.

``SPEEDRUN_TRACE_HOOKS=1`` prints every hook call with the implementations pluggy will try.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pluggy
import torch

from harness import hookspecs
from harness.fileio import sha256_file

HOOKS_FILE = "submission.py"
ENTRY_POINT_GROUP = "speedrun.submissions"
REPO_ROOT = Path(__file__).resolve().parents[1]
# The plugins behind every submission, asked last first: the harness's own train_step, then the reference recipe.
# Names, imported when a submission is loaded (as llm registers its default plugins), so this module does not
# depend on the baselines that depend on it.
DEFAULT_PLUGINS = (("harness-defaults", "harness.defaults"), ("baseline:nanochat", "baselines.nanochat.submission"))
EXAMPLE = Path("submissions") / "climbmix"  # the submission error messages point to
# Files that are part of a submission's identity (its digest); caches and editor droppings are not.
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


class SubmissionError(Exception):
    """A submission cannot be loaded; the message names the file, the problem and the fix."""


def hook_names() -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(_, "speedrun_spec"))


@dataclass
class Submission:
    """A loaded submission: its plugin manager and what identifies it in a record."""

    name: str
    path: Path  # the folder holding the hooks file
    module: ModuleType
    pm: pluggy.PluginManager
    overrides: list[str]  # hooks the submission itself implements
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pm.hook

    @property
    def source_digest(self) -> str:
        return source_digest(self.files)

    def sources(self) -> dict[str, str]:
        return read_sources(self.path, self.files)


def source_digest(files: dict[str, str]) -> str:
    """One digest over a submission folder's files (relative names and contents)."""
    lines = "".join(f"{path}\0{digest}\n" for path, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def read_sources(folder: Path, files: dict[str, str]) -> dict[str, str]:
    """The folder's files as text, for embedding in a record (every file of a submission is UTF-8 text)."""
    out = {}
    for rel in sorted(files):
        try:
            out[rel] = (folder / rel).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SubmissionError(
                f"{folder / rel} is not UTF-8 text: a record embeds every file of its submission, so a submission "
                f"holds text files only; move binary files out of {folder}"
            ) from None
    return out


def submission_files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of a submission folder; a symlink is refused by name."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if SKIP_PARTS & set(rel.parts) or path.suffix in SKIP_SUFFIXES:
            continue
        if path.is_symlink():
            raise SubmissionError(
                f"{path} is a symlink (to {os.readlink(path)}): a record embeds the submission's own files, so "
                f"replace the link with a copy of what it points to, or remove it"
            )
        if path.is_file():
            files[rel.as_posix()] = sha256_file(path)
    return files


def locate_submission(spec: str) -> Path:
    """The folder of a submission given as a folder, a hooks file or an entry-point name, without importing it."""
    candidate = Path(spec)
    if candidate.is_file() and candidate.suffix == ".py":
        candidate = candidate.parent
    if candidate.is_dir():
        if not (candidate / HOOKS_FILE).is_file():
            raise SubmissionError(
                f"{candidate} is a folder but has no {HOOKS_FILE}; put the submission's @hookimpl functions "
                f"in {candidate / HOOKS_FILE} (start from `python -m harness.new NAME --from submissions/climbmix`)."
            )
        return candidate.resolve()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == spec:
            search = None
            for part in entry_point.module.split("."):  # find the module's files without running any of them
                found = importlib.machinery.PathFinder.find_spec(part, search)
                if found is None or found.origin is None:
                    raise SubmissionError(f"entry point {spec!r} names {entry_point.module}, which is not installed")
                search = found.submodule_search_locations
            return Path(found.origin).resolve().parent
    raise no_such_submission(spec)


def no_such_submission(spec: str) -> SubmissionError:
    return SubmissionError(not_found_message(spec))


def describe_folder(folder: Path, name: str | None = None) -> dict:
    """What a record says of a submission: its name, folder, files with digests, their text, one digest."""
    files = submission_files(folder)
    return {
        "name": name or folder.name,
        "path": str(folder),
        "source_digest": source_digest(files),
        "overrides": [],
        "files": files,
        "sources": read_sources(folder, files),
    }


def import_hooks_file(path: Path, module_name: str) -> ModuleType:
    """Import a submission's hooks file by path, turning any import failure into a SubmissionError."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise SubmissionError(
            f"could not import submission file {path}: {type(exc).__name__}: {exc}\n"
            f"Fix the error in that file (run `python {path}` to see the full traceback)."
        ) from exc
    return module


def resolve(spec: str) -> tuple[str, Path, ModuleType]:
    """Find a submission by folder path, hooks-file path or entry-point name; import its hooks file."""
    candidate = Path(spec)
    if candidate.is_file() and candidate.suffix == ".py":
        candidate = candidate.parent
    if candidate.is_dir():
        hooks_file = candidate / HOOKS_FILE
        if not hooks_file.is_file():
            raise SubmissionError(
                f"{candidate} is a folder but has no {HOOKS_FILE}; put the submission's @hookimpl functions "
                f"in {hooks_file} (start from `python -m harness.new NAME --from submissions/climbmix`)."
            )
        folder = candidate.resolve()
        name = folder.name
        module = default_plugin_at(hooks_file.resolve())  # a default plugin run as the submission: one module
        if module is None:
            module = import_hooks_file(hooks_file, f"speedrun_submission_{name.replace('-', '_')}")
        return name, folder, module
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == spec:
            try:
                module = entry_point.load()
            except Exception as exc:
                raise SubmissionError(f"entry point {spec!r} ({entry_point.value}) failed to import: {exc}") from exc
            if hasattr(module, "submission"):  # a package whose hooks live in its submission.py
                module = module.submission
            return spec, Path(module.__file__).resolve().parent, module
    raise SubmissionError(not_found_message(spec))


def not_found_message(spec: str) -> str:
    """Why ``spec`` names no submission, and the path to pass instead. A relative path is read from the current
    directory, so ``submissions/x`` given elsewhere than the repository root is pointed at the repository's."""
    here = Path.cwd()
    in_repo = REPO_ROOT / spec
    if not Path(spec).is_absolute() and (in_repo / HOOKS_FILE).is_file():
        return (
            f"no folder {spec!r} in the current directory {here} (a relative path is read from there); the "
            f"repository's {spec} is {in_repo}: pass that path, or run the command from {REPO_ROOT}"
        )
    example = EXAMPLE if (here / EXAMPLE / HOOKS_FILE).is_file() else REPO_ROOT / EXAMPLE
    if "/" in spec or os.sep in spec:
        return (
            f"no folder {spec!r} (looked in {here / spec}); pass the path of a folder that holds {HOOKS_FILE}, "
            f"such as {example}"
        )
    known = sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return (
        f"no submission {spec!r}: not a folder in {here} and not an entry point in the {ENTRY_POINT_GROUP!r} "
        f"group (installed: {', '.join(known) or 'none'}). Pass the path of a folder that holds {HOOKS_FILE}, "
        f"such as {example}, or an installed entry point's name."
    )


def check_hook_functions(module: ModuleType, valid: list[str]) -> None:
    """Reject misspelt hooks and hook-named functions without @hookimpl, naming the file and valid names.

    Every problem of the file is reported at once: a submission with three undecorated hooks is fixed in one
    go, not in three failed runs.
    """
    path = getattr(module, "__file__", module.__name__)
    problems, undecorated = [], []
    for attr, value in vars(module).items():
        if not callable(value):
            continue
        marked = hasattr(value, "speedrun_impl")
        if marked and attr not in valid and getattr(value, "__module__", None) != module.__name__:
            problems.append(
                f"{attr!r} is a hook implementation imported from {value.__module__}, and pluggy would register it "
                f"as an unknown hook. Import its module instead (`from baselines.nanochat import submission as "
                f"baseline`) and call `baseline.{value.__name__}(...)` inside your own hook."
            )
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if marked and attr not in valid:
            close = difflib.get_close_matches(attr, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"unknown hook {attr!r}.{hint} Valid hook names: {', '.join(valid)}. "
                f"Rename the function (hooks are defined in harness/hookspecs.py)."
            )
        if not marked and attr in valid:
            undecorated.append(attr)
    if len(undecorated) == 1:
        problems.append(
            f"function {undecorated[0]!r} has a hook's name but no @hookimpl decorator, so it would be ignored. "
            "Add `from harness import hookimpl` and decorate it with @hookimpl."
        )
    elif undecorated:
        problems.append(
            f"functions {', '.join(map(repr, undecorated))} have hooks' names but no @hookimpl decorator, so they "
            "would be ignored. Add `from harness import hookimpl` and decorate each of them with @hookimpl."
        )
    if len(problems) == 1:
        raise SubmissionError(f"{path}: {problems[0]}")
    if problems:
        raise SubmissionError(f"{path}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def trace_hooks(pm: pluggy.PluginManager) -> None:
    def before(hook_name, hook_impls, kwargs):
        impls = ", ".join(pm.get_name(impl.plugin) for impl in reversed(hook_impls))
        args = ", ".join(sorted(kwargs))
        print(f"[speedrun hook] {hook_name}({args}) -> implementations in call order: {impls}", file=sys.stderr)

    def after(outcome, hook_name, hook_impls, kwargs):
        result = outcome.exception or outcome.get_result()
        print(f"[speedrun hook] {hook_name} returned {type(result).__name__}", file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


def register(pm: pluggy.PluginManager, module: ModuleType, name: str) -> None:
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise SubmissionError(
            f"{getattr(module, '__file__', name)}: {exc}. A hook implementation may take only the arguments of "
            f"its spec in harness/hookspecs.py, by the same names."
        ) from exc


def default_plugin_at(path: Path) -> ModuleType | None:
    """The default plugin module whose file is ``path`` (imported by name), or None."""
    for _, module_name in DEFAULT_PLUGINS:
        found = importlib.util.find_spec(module_name)
        if found is not None and found.origin and Path(found.origin).resolve() == path:
            return importlib.import_module(module_name)
    return None


def load_submission(spec: str) -> Submission:
    """Load ``spec`` with the default plugins behind it; fail fast on contract errors."""
    valid = hook_names()
    name, folder, module = resolve(spec)
    check_hook_functions(module, valid)
    pm = pluggy.PluginManager("speedrun")
    pm.add_hookspecs(hookspecs)
    for plugin_name, module_name in DEFAULT_PLUGINS:
        plugin = importlib.import_module(module_name)
        if plugin is not module:
            register(pm, plugin, plugin_name)
    register(pm, module, f"submission:{name}")
    pm.check_pending()
    if os.environ.get("SPEEDRUN_TRACE_HOOKS", "") not in ("", "0"):
        trace_hooks(pm)
    overrides = sorted(attr for attr in valid if hasattr(getattr(module, attr, None), "speedrun_impl"))
    return Submission(name, folder, module, pm, overrides, submission_files(folder))


# ------------------------------------------------------------------------------------------------
# Calling hooks: a failure names the file that answered, the hook and the fix

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


class StopSignals:
    """SIGINT/SIGTERM as RunInterrupted, raised at once; while ``deferring`` (a step, a child process the caller
    waits for) only noted in ``received``, for the caller to act on at a safe point. The referee and the worker
    both use it."""

    def __init__(self):
        self.received: list[str] = []
        self.deferring = False

    def install(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received.append(signal.Signals(signum).name)
        if not self.deferring:
            raise RunInterrupted(f"received {self.received[-1]}")

    @contextmanager
    def deferred(self):
        """Note signals instead of raising them, so that what runs inside is never cut in half."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    @staticmethod
    def uninstall() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
