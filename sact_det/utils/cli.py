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
    add_config_arguments(parser)                    # --config-file, and KEY VALUE overrides at the end
    args = parser.parse_args(argv)                  # bad arguments: SystemExit(2)
    check_range(parser, "--ponder-range", args.ponder_range)
    cfg = load_config(args.config_file, args.opts, parser)   # sact_det.engine.defaults
    return run_tool(lambda: work(cfg, args), parser.prog)   # bad input found later: returns 2

Config overrides are spelled as in Detectron2's tools: ``KEY VALUE`` pairs
that end the command line (``... --output out MODEL.WEIGHTS model.pth``), or
the same after ``--opts`` (Detectron2's ``demo.py``); :func:`split_overrides`
finds where they start, so that an option taking several values
(``--input a.jpg b.jpg``, ``--tasks flop``) may come right before them.

An :class:`~sact_det.utils.errors.InputError` is a problem with what the user gave (a file, a config
key, an argument, a checkpoint); the package raises it with a message that
names it. Its subclasses also derive from the built-in exception a caller would
expect (``FileNotFoundError``, ``ValueError``, ...), so ``except ValueError``
keeps working.
"""
import argparse
import os
import re
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from sact_det.utils.errors import INPUT_ERROR_STATUS, InputError
from sact_det.utils.files import unwritable_dir, write_failure
from sact_det.utils.noise import silence_known_noise

__all__ = ["ToolParser", "existing_file", "image_size", "positive_int", "non_negative_int", "positive_float",
           "non_negative_float", "percentage", "probability", "output_file", "output_dir", "check_range",
           "add_config_arguments", "add_override_arguments", "split_overrides", "OVERRIDES_SYNTAX", "error_message",
           "run_tool"]

OVERRIDES_SYNTAX = ("KEY VALUE pairs at the end of the command line, after every option "
                    "(e.g. MODEL.WEIGHTS model_final.pth), or the same after --opts")
# A config key as written on the command line: MODEL.WEIGHTS, SOLVER.BASE_LR, OUTPUT_DIR.
_CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*")


class ToolParser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (no usage dump): the argument and
    what was expected. ``--help`` still prints the full usage."""

    def __init__(self, description: str = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)
        self.takes_overrides = False  # set by add_override_arguments

    def error(self, message):
        self.exit(INPUT_ERROR_STATUS, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        """With config overrides (:func:`add_override_arguments`): the overrides
        are split off first (:func:`split_overrides`) and checked, the rest is
        parsed as usual; ``namespace.opts`` is the list of overrides."""
        if not self.takes_overrides:
            return super().parse_known_args(args, namespace)
        head, overrides = split_overrides(list(sys.argv[1:] if args is None else args))
        namespace, extras = super().parse_known_args(head, namespace)
        # Words left over before the first key (a positional argument where none is
        # expected) land in the positional ``opts`` and are checked with the rest.
        namespace.opts = list(namespace.opts or []) + overrides
        self._check_overrides(namespace.opts)
        return namespace, extras

    def _check_overrides(self, opts: List[str]) -> None:
        option = next((key for key in opts[::2] if key.startswith("-")), None)
        if option is not None:
            self.error(f"argument {option}: options go before the config overrides ({OVERRIDES_SYNTAX})")
        if len(opts) % 2:
            self.error(f"config overrides: expected {OVERRIDES_SYNTAX}; got an odd number of words: "
                       f"{' '.join(opts)}")


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


def add_config_arguments(parser: "ToolParser", required: bool = True, default: Optional[str] = None) -> None:
    """``--config-file FILE`` (``default``: not required) and the config
    overrides (:func:`add_override_arguments`), as every tool has them."""
    parser.add_argument("--config-file", required=required and default is None, default=default,
                        type=existing_file, metavar="FILE", help="model config (YAML)")
    add_override_arguments(parser)


def add_override_arguments(parser: "ToolParser") -> None:
    """Config overrides as Detectron2's tools take them: ``KEY VALUE`` pairs at
    the end of the command line (the positional ``opts``; kept if the parser has
    it, as Detectron2's ``default_argument_parser`` does), or after ``--opts``.
    Both end up in ``args.opts``; see :meth:`ToolParser.parse_known_args`."""
    if not any(action.dest == "opts" and not action.option_strings for action in parser._actions):
        parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                            help="config overrides: KEY VALUE pairs that end the command line, "
                                 "e.g. MODEL.WEIGHTS output/demo/model_final.pth")
    parser.add_argument("--opts", dest="opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="the same overrides after --opts (as Detectron2's demo.py takes them)")
    parser.takes_overrides = True


def _config_roots() -> Tuple[set, set]:
    """(sections, top-level values) of Detectron2's config: MODEL, SOLVER, ...; OUTPUT_DIR, SEED, ..."""
    from detectron2.config import CfgNode, get_cfg

    cfg = get_cfg()
    return ({key for key, value in cfg.items() if isinstance(value, CfgNode)},
            {key for key, value in cfg.items() if not isinstance(value, CfgNode)})


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``argv`` -> (options, config overrides). The overrides start after
    ``--opts`` or at the first word that is a config key: upper case, and a
    section of Detectron2's config followed by a dotted path (``MODEL.WEIGHTS``,
    also misspelt ones, which the config then names) or one of its top-level
    values (``OUTPUT_DIR``, ``SEED``). File names (``IMG_0001.JPG``) are not keys."""
    sections, values = _config_roots()
    argv = list(argv)
    for index, word in enumerate(argv):
        root, dot, _ = word.partition(".")
        if word == "--opts" or (_CONFIG_KEY.fullmatch(word) and root in (sections if dot else values)):
            start = index + (word == "--opts")
            return argv[:index], [w for w in argv[start:] if w != "--opts"]
    return argv, []


def error_message(error: BaseException) -> str:
    """The message of ``error`` as one line: bare for a KeyError (which quotes
    it), and the original message for an error a DataLoader worker raised
    (torch re-raises it with the worker's whole traceback as its message)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if "\nOriginal Traceback (most recent call last):" in text:
        last = text.strip().splitlines()[-1]  # "module.Class: message" of the worker's exception
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def run_tool(main: Callable[[], Optional[int]], prog: str = None) -> int:
    """Runs a tool's ``main`` and returns its exit status (``None``: 0). The
    errors a user can cause (an :class:`InputError`, a missing or unreadable
    file, a bad config key or value, a checkpoint that does not fit, a full
    disk) become one ``prog: error: ...`` line on stderr and status
    :data:`INPUT_ERROR_STATUS`."""
    prog = prog or os.path.basename(sys.argv[0])
    silence_known_noise()
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
