"""Writing files so that a killed or failed writer leaves nothing that looks complete."""
import contextlib
import os

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs):
    """Opens a temporary file beside ``path`` for writing and, once the block
    succeeds, renames it to ``path`` (``os.replace``: atomic on POSIX file
    systems). On an error the temporary file is removed and ``path`` keeps its
    old content, so a reader never sees half a file, and a process killed
    mid-write leaves only a ``.tmp`` file behind, which nothing reads.

        with atomic_write("report.json") as f:
            json.dump(report, f)
    """
    # Created with open() rather than tempfile.mkstemp, so that the file gets the
    # usual permissions (umask) instead of mkstemp's owner-only ones.
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, mode, **open_kwargs) as f:
            yield f
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
