"""What the command-line tools share: argument checks that fail with one line,
config loading, and output files that appear only when complete.

A tool in ``tools/`` builds its parser with :class:`ToolParser`, declares its
arguments with the ``type=`` checkers below, and runs its one package call
through :func:`run_tool`, so that every bad input ends the same way: one line
``<tool>: error: <argument>: <what was expected>`` on stderr and exit status 2.
"""
import argparse
import contextlib
import os
import sys
from typing import Callable, Iterator, Sequence, Tuple

__all__ = ["ToolParser", "existing_file", "image_size", "positive_int", "output_file",
           "add_config_arguments", "load_config", "partial_name", "atomic_path", "run_tool"]


class ToolParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (no usage dump): the argument and
    what was expected. ``--help`` still prints the full usage."""

    def __init__(self, description: str = None, **kwargs):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                         **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def existing_file(path: str) -> str:
    """``type=`` for an input file that must exist and be readable."""
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"expected an existing file, {path!r} is not one")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"expected a readable file, {path!r} is not readable")
    return path


def image_size(text: str) -> Tuple[int, int]:
    """``type=`` for ``HxW`` (e.g. ``600x800``) -> ``(600, 800)``."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in pixels (e.g. 600x800), got {text!r}")
    return int(parts[0]), int(parts[1])


def positive_int(text: str) -> int:
    """``type=`` for an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def output_file(*extensions: str) -> Callable[[str], str]:
    """``type=`` for an output file with one of ``extensions`` in a directory
    that exists or can be created."""
    def check(path: str) -> str:
        if not path.lower().endswith(extensions):
            raise argparse.ArgumentTypeError(f"expected a file name ending in {' or '.join(extensions)}, "
                                             f"got {path!r}")
        if os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"expected a file name, {path!r} is a directory")
        return path
    return check


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config-file`` and ``--opts KEY VALUE ...``, as the other tools have them."""
    parser.add_argument("--config-file", required=required, type=existing_file, metavar="FILE",
                        help="model config (YAML)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS output/demo/model_final.pth")


def load_config(config_file: str, opts: Sequence[str] = ()):
    """The SACT config of a tool: file + overrides, on the CPU when CUDA is
    absent, with the datasets of ``DATASETS.COCO_JSON`` registered; a local
    ``MODEL.WEIGHTS`` file that does not exist is an error before anything is built."""
    from .config import fall_back_to_cpu, get_sact_cfg
    from .data import register_config_datasets

    cfg = get_sact_cfg(config_file, list(opts))
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS: expected a checkpoint file, {weights!r} does not exist")
    fall_back_to_cpu(cfg)
    register_config_datasets(cfg)
    return cfg


def partial_name(path: str) -> str:
    """A hidden name beside ``path`` for the file while it is written, with the
    same extension (writers that choose a format by extension keep working)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields :func:`partial_name` of ``path`` and renames it to ``path`` when
    the block succeeds; on failure the partial file is removed. So a file at
    ``path`` is always complete."""
    temporary = partial_name(path)
    os.makedirs(os.path.dirname(temporary), exist_ok=True)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def run_tool(main: Callable[[], int], prog: str = None) -> int:
    """Runs a tool's ``main`` and turns the errors a user can cause (a missing or
    unreadable file, a bad config key or value, a checkpoint that does not fit)
    into one ``prog: error: ...`` line and exit status 2."""
    from .checkpoint import CheckpointMismatchError

    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main() or 0
    except (FileNotFoundError, PermissionError, KeyError, ValueError, CheckpointMismatchError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
