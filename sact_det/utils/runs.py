"""Keeping training runs apart: an output directory checked before a run
writes there, one run per output directory, and worker processes that end with
the process that launched them."""
import ctypes
import fcntl
import os
import signal
import socket
import sys
import tempfile
import threading
import time

from sact_det.utils.errors import InputError, OutputWriteError
from sact_det.utils.files import unwritable_dir

__all__ = ["LOCK_FILE", "RUN_FILES", "OutputDirInUseError", "OutputDirLock", "prepare_output_dir", "exit_with_parent"]

LOCK_FILE = "training.lock"
# Files a run opens in OUTPUT_DIR and writes in place or appends to (Detectron2's
# default_setup, logger and JSONWriter; the lock), so that a symbolic link there
# would be written through. log.txt.rank<N> for the other processes.
RUN_FILES = ("config.yaml", "log.txt", "metrics.json", LOCK_FILE)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class OutputDirInUseError(InputError, RuntimeError):
    pass


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or name.startswith("log.txt.rank")


def prepare_output_dir(directory: str) -> None:
    """Creates a run's OUTPUT_DIR and checks that the run can write there
    before it does: an :class:`~sact_det.utils.errors.OutputWriteError` names
    the directory when it cannot be made (a regular file in its path, no
    permission) or written, and names any of :data:`RUN_FILES` that is a
    symbolic link. The run did not make such a link, and writing through it
    would change a file elsewhere, so it is refused rather than followed;
    removing it is the user's decision. (Checkpoints and other outputs are
    written by :func:`~sact_det.utils.files.atomic_path`, which replaces a link.)"""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):  # os.access says yes to root on read-only mounts
            pass
    except OSError as e:
        reason = unwritable_dir(directory) or f"{e.strerror}{f': {e.filename}' if e.filename else ''}"
        raise OutputWriteError(f"OUTPUT_DIR {directory}: cannot write there ({reason})") from None
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if _is_run_file(name) and os.path.islink(path):
            raise OutputWriteError(
                f"OUTPUT_DIR {directory}: {name} is a symbolic link (to {os.readlink(path)}), which this run did "
                "not make; runs do not write through links: remove it, or choose another OUTPUT_DIR")


class OutputDirLock:
    """An exclusive ``flock`` on ``OUTPUT_DIR/training.lock`` for as long as a
    training run lives, so that two runs never write checkpoints into the same
    directory. The file holds the owner's pid, host, start time and command,
    which a second run quotes in its error.

    The kernel releases an ``flock`` when its owner dies, however it dies, so
    the file a killed run leaves behind never blocks the next one. (Some network
    file systems do not honour ``flock`` across machines.)

        with OutputDirLock(cfg.OUTPUT_DIR):
            trainer.train()
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self._fd = None

    def acquire(self) -> "OutputDirLock":
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never through a link
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode(errors="replace").strip() or "details not written yet"
            os.close(fd)
            raise OutputDirInUseError(
                f"OUTPUT_DIR {self.directory} is in use by another training run ({owner}); "
                "wait for it to end or stop it, or give another OUTPUT_DIR "
                "(--eval-only may read the directory meanwhile)") from None
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: deleting it could let a third run lock a new file
            # while a second one holds the old, unlinked one.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _watch_parent(parent_pid: int, period_s: float = 1.0) -> None:
    while os.getppid() == parent_pid:
        time.sleep(period_s)
    os._exit(1)


def exit_with_parent(parent_pid: int) -> None:
    """Ends this process as soon as ``parent_pid``, the process that started it,
    dies: a launcher killed with SIGKILL cannot stop its workers itself, and
    orphaned workers would go on training and writing checkpoints.

    On Linux the kernel sends SIGKILL on the parent's death (``prctl
    PR_SET_PDEATHSIG``); elsewhere a daemon thread checks once a second. A parent
    that died before this call is noticed at once (the process has been adopted).
    """
    watched = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        watched = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if not watched:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                         name="exit-with-parent").start()
    if os.getppid() != parent_pid:
        os._exit(1)
