"""What the referee watches while submission code runs: files it reads, files it changes, processes it leaves.

    watch = FileWatch([bundle_dir, val_file])        # inotify: any open or read of these files is noticed
    ...run the worker...
    touched = watch.close()                           # names of the watched files something opened
    changed = changed_during([(start, end)], library_roots())   # files of the Python installation changed then
    reap_descendants()                                # kill what the worker left behind (daemons included)

The referee runs no submission code itself, but the worker it launches does, as the same user. These checks
are how the referee notices what it cannot prevent: reading the eval bundle or the validation shard (the worker
is never told where they are), editing the code the referee's eval processes import, or a background process
left alive to tamper with files after training. Linux only (inotify, prctl); elsewhere the watch reports
itself unavailable and the record says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import site
import struct
import sys
import sysconfig
import time
from pathlib import Path

IN_ACCESS, IN_OPEN, IN_Q_OVERFLOW = 0x001, 0x020, 0x4000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE = 36, 4
EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if sys.platform == "linux" else None


class FileWatch:
    """inotify watches on files (and on every file of a folder): which of them were opened or read, by anyone.

    inotify watches inodes, so an open through any path (a symlink, another mount of the same file) is seen.
    Opens by the referee itself while the watch is active would count too: start it only after the referee's
    own reads are done.
    """

    def __init__(self, paths: list[Path]):
        self.names: dict[int, Path] = {}
        self.fd = -1
        self.available = _libc is not None
        if not self.available:
            return
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            self.available = False
            return
        for path in paths:
            for file in sorted(Path(path).rglob("*")) if Path(path).is_dir() else [Path(path)]:
                if file.is_file():
                    wd = _libc.inotify_add_watch(self.fd, os.fsencode(file), IN_OPEN | IN_ACCESS)
                    if wd < 0:
                        raise OSError(ctypes.get_errno(), f"cannot watch {file}: {os.strerror(ctypes.get_errno())}")
                    self.names[wd] = file

    def touched(self) -> list[str]:
        """The watched files opened or read since the watch began (or all of them if the queue overflowed)."""
        if self.fd < 0:
            return []
        seen: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            at = 0
            while at < len(data):
                wd, mask, _, length = EVENT_HEADER.unpack_from(data, at)
                at += EVENT_HEADER.size + length
                if mask & IN_Q_OVERFLOW:
                    return sorted(str(p) for p in self.names.values())
                if wd in self.names:
                    seen.add(str(self.names[wd]))
        return sorted(seen)

    def close(self) -> list[str]:
        touched = self.touched()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        return touched


def library_roots() -> list[Path]:
    """Where the code a Python process imports lives: the standard library, the installed packages and, where
    Python reads it (outside a virtual environment), the user's own site-packages, whose usercustomize.py would
    run in every later process."""
    paths = sysconfig.get_paths()
    roots = {Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    if site.ENABLE_USER_SITE:
        roots.add(Path(site.getusersitepackages()).resolve())
    return sorted(root for root in roots if not any(root != other and root.is_relative_to(other) for other in roots))


def changed_during(spans: list[tuple[float, float]], roots: list[Path], limit: int = 20) -> list[str]:
    """Files under ``roots`` whose inode changed (ctime) within one of the (start, end) ``spans`` (wall clock):
    created, written, renamed or re-permissioned. ctime cannot be set back by an unprivileged process, unlike
    mtime. One walk of the roots, whatever the number of spans."""
    changed = []
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    ctime = os.lstat(path).st_ctime
                except OSError:
                    continue
                if any(start <= ctime <= end for start, end in spans):
                    changed.append(path)
                if len(changed) >= limit:
                    return changed
    return changed


def refuse_tracing() -> None:
    """Refuse ptrace and /proc/<pid>/mem access to this process from other unprivileged processes (the worker
    runs as the same user). Set again after every exec, which resets it. Linux only."""
    if _libc is not None:
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (a daemon the worker double-forks stays our descendant), and refuse tracing.
    Linux only."""
    refuse_tracing()
    if _libc is None:
        return False
    return _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def descendants(root: int | None = None) -> list[int]:
    """Process ids whose parent chain leads to ``root`` (this process by default), from /proc."""
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])  # the command may contain spaces
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def reap_descendants(grace_s: float = 2.0, spare: frozenset[int] = frozenset()) -> list[int]:
    """End every descendant process except ``spare`` (the referee's own processes): SIGTERM, then SIGKILL after
    ``grace_s``; return the pids that were alive."""
    found = alive = [pid for pid in descendants() if pid not in spare]
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        _collect_zombies()
        alive = [pid for pid in alive if _exists(pid)]
        time.sleep(0.05)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    _collect_zombies()
    return found


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _collect_zombies() -> None:
    """Wait for adopted orphans that have exited (our own Popen children are waited for by their owners)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
