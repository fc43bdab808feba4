"""Output files that appear only when complete, what killed writers left, and
one writer at a time for shared generated data."""
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
from typing import Iterator, List, Optional

from sact_det.utils.errors import OutputWriteError

__all__ = ["partial_name", "atomic_path", "write_failure", "unwritable_dir", "remove_stale_partials", "one_at_a_time"]

# errno values that mean "the storage refused the data", not "the program is wrong".
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)
# partial_name's pattern: .<stem>.partial-<pid><ext>
_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial-(?P<pid>[0-9]+)(?P<ext>\.[^.]*)?$")


def partial_name(path: str) -> str:
    """A hidden name beside ``path`` for the file while it is written, with the
    same extension (writers that choose a format by extension keep working)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}")


def write_failure(error: BaseException) -> Optional[OSError]:
    """The ``OSError`` of :data:`WRITE_FAILURES` behind ``error``: itself, or one it
    was raised while handling (torch's zip writer turns a failed write into a
    ``RuntimeError`` "unexpected pos"); None if there is none."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
            return error
        error = error.__cause__ or error.__context__
    return None


def unwritable_dir(path: str) -> Optional[str]:
    """Why files cannot be created in directory ``path`` (made if absent), or None."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the nearest existing ancestor will hold the new directories
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields :func:`partial_name` of ``path`` and renames it to ``path`` when
    the block succeeds (``os.replace``: atomic on POSIX file systems, and a
    symbolic link at ``path`` is replaced, not written through); on any
    failure, an interruption included, the partial file is removed and ``path``
    keeps its old content. So a file at ``path`` is always complete, and a
    process killed mid-write leaves only a hidden partial file, which nothing
    reads and the next training run in that directory removes
    (:func:`remove_stale_partials`). A directory that cannot be made and a
    write the storage refuses (disk full, quota, read-only) are an
    :class:`~sact_det.utils.errors.OutputWriteError` naming ``path``.

        with atomic_path("report.json") as temporary, open(temporary, "w") as f:
            json.dump(report, f)
    """
    temporary = partial_name(path)
    try:
        os.makedirs(os.path.dirname(temporary), exist_ok=True)
    except OSError as e:
        raise OutputWriteError(f"cannot write {path}: {unwritable_dir(os.path.dirname(temporary)) or e}") from None
    try:
        yield temporary
        os.replace(temporary, path)
    except Exception as e:
        failure = write_failure(e)
        if failure is None:
            raise
        raise OutputWriteError(f"cannot write {path}: {failure.strerror or failure}") from e
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(directory: str) -> List[str]:
    """Removes the files (and directories) named like :func:`partial_name`'s in
    ``directory`` whose writing process is no longer alive on this machine:
    what a run killed while writing left. Returns their paths. Only for a
    directory that one run owns (a training run's OUTPUT_DIR, under its lock),
    as the process ids are those of this machine."""
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _PARTIAL.match(name)
        if match is None or _alive(int(match["pid"])):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(path)
    return removed


@contextlib.contextmanager
def one_at_a_time(lock_file: str, what: str) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``lock_file`` (created, with its
    directory) for the block, waiting for another process that holds it (and
    saying so once): two processes that find ``what`` missing, e.g. the ranks
    of a multi-GPU launch or two trainings started together on a fresh clone,
    then generate it once, not into each other. The kernel releases the lock
    of a process that dies, so a killed generator never blocks the next."""
    os.makedirs(os.path.dirname(os.path.abspath(lock_file)), exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger("sact_det").info(f"waiting for another process to finish preparing {what}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
