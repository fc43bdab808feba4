"""Output files that appear only when complete."""
import contextlib
import os
from typing import Iterator

__all__ = ["partial_name", "atomic_path"]


def partial_name(path: str) -> str:
    """A hidden name beside ``path`` for the file while it is written, with the
    same extension (writers that choose a format by extension keep working)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields :func:`partial_name` of ``path`` and renames it to ``path`` when
    the block succeeds (``os.replace``: atomic on POSIX file systems); on any
    failure, an interruption included, the partial file is removed and ``path``
    keeps its old content. So a file at ``path`` is always complete, and a
    process killed mid-write leaves only a hidden partial file, which nothing reads.

        with atomic_path("report.json") as temporary, open(temporary, "w") as f:
            json.dump(report, f)
    """
    temporary = partial_name(path)
    os.makedirs(os.path.dirname(temporary), exist_ok=True)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
