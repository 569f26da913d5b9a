"""One process per run dir: an exclusive ``flock`` on ``<run dir>/.lock`` held for the whole run.

Two processes in one run dir (a resumed job started twice, a sweep pointed at one dir) would
interleave metrics.jsonl and overwrite each other's summary; the second one is refused instead.

Why ``fcntl.flock`` and not a pid file: the kernel releases the lock when the holder's file
descriptor closes, which includes SIGKILL, OOM kills and crashes, so a stale lock cannot outlive
its process on the same machine (nothing to clean up, no pid to check). On NFS, Linux emulates
``flock`` with POSIX byte-range locks (since 2.6.12), which the server arbitrates across clients;
a client that disappears (node loss) has its locks dropped when its lease expires (NFSv4, about
90 s) or when its lock manager restarts (NFSv3). A file system mounted with ``nolock`` or
``local_lock=flock`` only sees locks taken on the same node: mind this when two nodes can be
pointed at one run dir.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import ConfigError

LOCK_NAME = ".lock"


class RunDirLock:
    """``with RunDirLock(run_dir):`` holds the run dir for this process or raises ConfigError
    (one line: another process holds it, or the dir cannot be written)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunDirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(
                f"hydra.run.dir={self.path.parent}: cannot write there ({err.strerror}); pick a writable hydra.run.dir"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError(
                    f"hydra.run.dir={self.path.parent}: another zobench process{holder} is running in "
                    "this run dir; wait for it to end or use another hydra.run.dir"
                ) from None
            raise ConfigError(f"hydra.run.dir={self.path.parent}: cannot lock {self.path} ({err.strerror})") from err
        os.ftruncate(fd, 0)  # who holds it, for the message a second process prints
        os.write(fd, f"{os.getpid()} {os.uname().nodename}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock; the file stays (unlinking it would race)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return ""
    return f" (pid {text[0]} on {text[1]})" if len(text) >= 2 else ""


def unusable_run_dir(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be created or written (None: it can), checked without creating it:
    the nearest existing ancestor must be a folder this process may write to, and (for a new
    one) one in which a folder can really be made (``/proc``, a read-only or full mount: root
    passes the permission check there, the ``mkdir`` fails)."""
    import tempfile

    path = Path(run_dir).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    try:  # a probe folder, removed at once: nothing is left behind
        os.rmdir(tempfile.mkdtemp(prefix=".zobench-probe-", dir=existing))
    except OSError as err:
        return f"cannot make a folder in {existing}: {err.strerror}"
    return None


def empty_dir_setting(key: str, value) -> str | None:
    """The one line for an empty ``hydra.run.dir`` / ``hydra.sweep.dir`` (an unset shell variable:
    ``hydra.run.dir=$OUT``), which would write a whole run into the current directory."""
    if value is None or str(value).strip():
        return None
    return (
        f"{key} is empty (an unset shell variable?): the run would be written into the current "
        f"directory; give a folder, e.g. {key}=outputs/my-run"
    )


try:
    from hydra.experimental.callback import Callback
except ImportError:  # hydra is a dependency; this only keeps the lock importable without it
    Callback = object  # type: ignore[assignment,misc]  # the fallback base class of a missing hydra


class RunDirCheck(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): before Hydra creates the run dir
    (a sweep: the sweep dir) and writes its log and ``.hydra/`` there, a dir that is empty or
    cannot be written ends the command with one line and exit 2 (Hydra's own report of the
    failed mkdir is a traceback; an empty one is the current directory)."""

    def on_run_start(self, config, **kwargs) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)

    @staticmethod
    def _check(key: str, value) -> None:
        problem = empty_dir_setting(key, value)
        if problem is None:
            reason = unusable_run_dir(Path(str(value)))
            problem = f"{key}={value}: cannot write there ({reason}); pick a writable {key}" if reason else None
        if problem:
            import sys

            print(f"zobench: error: {problem}", file=sys.stderr)
            sys.exit(2)
