"""What the command-line tools share: argument types that say what they expect,
checks that run before any work starts, and one ``error: ...`` line (argparse's
style, no traceback) for bad input found later (:class:`~sact_det.errors.InputError`).

    parser.add_argument("--size", type=positive_int, nargs=2)
    args = parser.parse_args(argv)
    check_range(parser, "--ponder-range", args.ponder_range)
    cfg = load_config(parser, args.config_file, args.opts)
    with report_input_errors(parser):
        run(...)
"""
import argparse
import contextlib
import os
from typing import Optional, Sequence, Tuple

from .errors import InputError

__all__ = ["positive_int", "non_negative_int", "non_negative_float", "positive_float", "probability",
           "image_size", "check_range", "check_output_file", "check_output_dir", "load_config",
           "report_input_errors"]


def _number(text: str, kind, what: str, ok) -> float:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, "a positive integer", lambda v: v > 0)


def non_negative_int(text: str) -> int:
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    return _number(text, float, "a positive number", lambda v: 0 < v < float("inf"))


def non_negative_float(text: str) -> float:
    return _number(text, float, "a number >= 0", lambda v: 0 <= v < float("inf"))


def probability(text: str) -> float:
    return _number(text, float, "a number between 0 and 1", lambda v: 0 <= v <= 1)


def image_size(text: str) -> Tuple[int, int]:
    """``HxW`` (e.g. ``600x800``) -> (height, width), both positive."""
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        height = width = 0
    if len(parts) != 2 or height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH with positive integers (e.g. 600x800), "
                                         f"got {text!r}")
    return height, width


def check_range(parser: argparse.ArgumentParser, option: str, values: Optional[Sequence[float]]) -> None:
    """``MIN MAX`` with MIN < MAX (None: not given)."""
    if values is not None and not values[0] < values[1]:
        parser.error(f"argument {option}: MIN must be less than MAX, got {values[0]:g} {values[1]:g}")


def _writable_dir(path: str) -> Optional[str]:
    """Why files cannot be created in directory ``path`` (made if absent), or None."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the nearest existing ancestor will hold the new directories
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_output_file(parser: argparse.ArgumentParser, option: str, path: Optional[str]) -> None:
    """An output file that can be written: its directory exists and is writable,
    and it is not a directory."""
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    problem = ("it is a directory" if os.path.isdir(path) else
               f"directory {directory} does not exist" if not os.path.isdir(directory) else
               _writable_dir(directory))
    if problem:
        parser.error(f"argument {option}: cannot write {path}: {problem}")


def check_output_dir(parser: argparse.ArgumentParser, option: str, path: str) -> None:
    """An output directory that exists or can be created, and is writable."""
    problem = _writable_dir(path)
    if problem:
        parser.error(f"argument {option}: cannot write into {path}: {problem}")


def load_config(parser: argparse.ArgumentParser, config_file: str, opts=()):
    """The sact-det config of the command line; a missing file, an unknown key
    or an invalid value is an argument error."""
    from .config import get_sact_cfg

    try:
        return get_sact_cfg(config_file, list(opts))
    except (KeyError, ValueError, FileNotFoundError) as e:  # get_sact_cfg's messages name the key or file
        parser.error(str(e.args[0]) if e.args else str(e))


@contextlib.contextmanager
def report_input_errors(parser: argparse.ArgumentParser, status: int = 1):
    """Turns an :class:`InputError` raised inside the block into one line,
    ``<prog>: error: <message>``, and exit status ``status``."""
    try:
        yield
    except InputError as e:
        parser.exit(status, f"{parser.prog}: error: {e}\n")
