"""What the command-line tools share: argument checks that fail with one
line, and one way to end on bad input.

A tool in ``tools/`` builds its parser with :class:`ToolParser`, declares its
arguments with the ``type=`` checkers below (checked before any work starts),
and runs its one package call through :func:`run_tool`, so that every bad
input ends the same way: one line ``<tool>: error: <what, and what was
expected>`` on stderr and exit status 2 (:data:`INPUT_ERROR_STATUS`)::

    parser = ToolParser(__doc__)
    parser.add_argument("--sizes", nargs="+", type=image_size)
    parser.add_argument("--json", type=output_file(".json"))
    args = parser.parse_args(argv)                  # bad arguments: SystemExit(2)
    check_range(parser, "--ponder-range", args.ponder_range)
    cfg = load_config(args.config_file, args.opts, parser)   # sact_det.engine.defaults
    return run_tool(lambda: work(cfg, args), parser.prog)   # bad input found later: returns 2

An :class:`~sact_det.utils.errors.InputError` is a problem with what the user gave (a file, a config
key, an argument, a checkpoint); the package raises it with a message that
names it. Its subclasses also derive from the built-in exception a caller would
expect (``FileNotFoundError``, ``ValueError``, ...), so ``except ValueError``
keeps working.
"""
import argparse
import logging
import os
import sys
import warnings
from typing import Callable, Optional, Sequence, Tuple

from sact_det.utils.errors import INPUT_ERROR_STATUS, InputError
from sact_det.utils.files import unwritable_dir, write_failure

__all__ = ["ToolParser", "existing_file", "image_size", "positive_int", "non_negative_int", "positive_float",
           "non_negative_float", "percentage", "probability", "output_file", "output_dir", "check_range",
           "add_config_arguments", "error_message", "quiet_known_warnings", "run_tool"]


class ToolParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (no usage dump): the argument and
    what was expected. ``--help`` still prints the full usage."""

    def __init__(self, description: str = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)

    def error(self, message):
        self.exit(INPUT_ERROR_STATUS, f"{self.prog}: error: {message}\n")


def existing_file(path: str) -> str:
    """``type=`` for an input file that must exist and be readable."""
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"expected an existing file, {path!r} is not one")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"expected a readable file, {path!r} is not readable")
    return path


def image_size(text: str) -> Tuple[int, int]:
    """``type=`` for ``HxW`` (e.g. ``600x800``) -> ``(600, 800)``, both positive."""
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in pixels (e.g. 600x800), got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH with positive integers (e.g. 600x800), "
                                         f"got {text!r}")
    return height, width


def _number(text: str, kind, what: str, ok):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``type=`` for an integer >= 1."""
    return _number(text, int, "a positive integer", lambda v: v > 0)


def non_negative_int(text: str) -> int:
    """``type=`` for an integer >= 0."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def positive_float(text: str) -> float:
    """``type=`` for a finite number > 0."""
    return _number(text, float, "a positive number", lambda v: 0 < v < float("inf"))


def non_negative_float(text: str) -> float:
    """``type=`` for a finite number >= 0."""
    return _number(text, float, "a number >= 0", lambda v: 0 <= v < float("inf"))


def percentage(text: str) -> float:
    """``type=`` for a share in percent, in (0, 100]."""
    return _number(text, float, "a percentage in (0, 100]", lambda v: 0 < v <= 100)


def probability(text: str) -> float:
    """``type=`` for a number in [0, 1]."""
    return _number(text, float, "a number between 0 and 1", lambda v: 0 <= v <= 1)


def output_file(*extensions: str, create_parent: bool = False) -> Callable[[str], str]:
    """``type=`` for an output file (with one of ``extensions``, if given) in a
    writable directory: one that exists or, with ``create_parent``, one that
    can be created (the writer creates it)."""
    def check(path: str) -> str:
        if os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"cannot write {path}: it is a directory")
        if extensions and not path.lower().endswith(extensions):
            raise argparse.ArgumentTypeError(f"expected a file name ending in {' or '.join(extensions)}, "
                                             f"got {path!r}")
        directory = os.path.dirname(os.path.abspath(path))
        if not create_parent and not os.path.isdir(directory):
            raise argparse.ArgumentTypeError(f"cannot write {path}: directory {directory} does not exist")
        problem = unwritable_dir(directory)
        if problem:
            raise argparse.ArgumentTypeError(f"cannot write {path}: {problem}")
        return path
    return check


def output_dir(path: str) -> str:
    """``type=`` for an output directory that exists or can be created, and is writable."""
    problem = unwritable_dir(path)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write into {path}: {problem}")
    return path


def check_range(parser: argparse.ArgumentParser, option: str, values: Optional[Sequence[float]]) -> None:
    """``MIN MAX`` (``nargs=2``) with MIN < MAX (None: not given)."""
    if values is not None and not values[0] < values[1]:
        parser.error(f"argument {option}: MIN must be less than MAX, got {values[0]:g} {values[1]:g}")


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config-file`` and ``--opts KEY VALUE ...``, as the other tools have them."""
    parser.add_argument("--config-file", required=required, type=existing_file, metavar="FILE",
                        help="model config (YAML)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS output/demo/model_final.pth")


def error_message(error: BaseException) -> str:
    """The message of ``error`` as one line: bare for a KeyError (which quotes
    it), and the original message for an error a DataLoader worker raised
    (torch re-raises it with the worker's whole traceback as its message)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if "\nOriginal Traceback (most recent call last):" in text:
        last = text.strip().splitlines()[-1]  # "module.Class: message" of the worker's exception
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def quiet_known_warnings() -> None:
    """Silences two messages that Detectron2's and torch's own code print on
    every run, which a user cannot act on: torch's ``meshgrid`` indexing notice
    (from Detectron2's anchor generator) and its ``is_fx_tracing`` notice (from
    Detectron2's ROI pooler). For our command-line entry points only."""
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def run_tool(main: Callable[[], Optional[int]], prog: str = None) -> int:
    """Runs a tool's ``main`` and returns its exit status (``None``: 0). The
    errors a user can cause (an :class:`InputError`, a missing or unreadable
    file, a bad config key or value, a checkpoint that does not fit, a full
    disk) become one ``prog: error: ...`` line on stderr and status
    :data:`INPUT_ERROR_STATUS`."""
    prog = prog or os.path.basename(sys.argv[0])
    quiet_known_warnings()
    try:
        return main() or 0
    except (InputError, FileNotFoundError, PermissionError, KeyError, ValueError) as e:
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr, flush=True)
        return INPUT_ERROR_STATUS
    except Exception as e:
        failure = write_failure(e)  # disk full or read-only in a writer of Detectron2's (metrics.json, ...)
        if failure is None:
            raise
        print(f"{prog}: error: {failure}", file=sys.stderr, flush=True)
        return INPUT_ERROR_STATUS
