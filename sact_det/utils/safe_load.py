"""Load checkpoint files without letting them run code.

Detectron2's ``DetectionCheckpointer`` reads ``.pkl`` files with plain
``pickle.load``, and a pickle can name any importable callable (``os.system``,
``builtins.eval``...) and have it called while loading. ``.pth`` files go
through ``torch.load``, which is only safe with ``weights_only=True``.

This module reads both kinds of file while admitting only weights data:

* ``.pkl``: a restricted unpickler that can build dicts, lists, tuples,
  strings, numbers, a few plain builtin containers, ``OrderedDict`` and
  numpy arrays/scalars of bool, integer, float or complex dtype. Everything
  else is refused with :class:`UnsafeCheckpointError` *before* it is called.
* everything else: ``torch.load(..., weights_only=True)``, with its refusals
  turned into :class:`UnsafeCheckpointError` as well.

Only the standard library, numpy, torch (lazily) and :mod:`sact_det.utils.errors`
are imported: nothing of Detectron2, so every layer may use it. Refusals and
unreadable files are :class:`~sact_det.utils.errors.InputError` s, which the
tools end with one line naming the file.
"""

import collections
import os
import pickle
import re
import zipfile

import numpy as np

from sact_det.utils.errors import InputError, InputValueError

__all__ = [
    "UnsafeCheckpointError",
    "is_binary_checkpoint",
    "load_pickle_weights",
    "load_torch_weights",
    "load_checkpoint_file",
]

_ALLOWED_TEXT = (
    "only dicts, lists, tuples, strings, numbers, numpy arrays/scalars are allowed"
)


class UnsafeCheckpointError(InputError, ValueError):
    """A checkpoint asked for something that is not weights data.

    An :class:`~sact_det.utils.errors.InputError` (tools end with its one-line
    message, which names the file and what was refused), and a ``ValueError`` so
    that callers treating "bad checkpoint file" as a value problem keep working.
    """

    def __init__(self, name, what):
        self.filename = name
        self.refused = what
        super().__init__(
            f"{name}: refuses to load: the pickle asks for {what}, which is not "
            f"weights data; {_ALLOWED_TEXT}"
        )


class _Refused(Exception):
    """Raised inside the unpickler; turned into UnsafeCheckpointError by the caller,
    which knows the file name."""


# --------------------------------------------------------------------------
# numpy reconstruction, guarded
# --------------------------------------------------------------------------
# numpy's own pickle helpers are memory-unsafe when fed hostile arguments:
# ``numpy.ndarray(shape, dtype=object, buffer=b"...")`` makes an object array
# whose "pointers" are attacker bytes, and ``dtype.__setstate__`` accepts forged
# flags that hide object fields. So the real callables are never handed to the
# pickle; these wrappers check their arguments first, and dtypes are limited
# to plain numeric kinds (no object, no structured/void, no strings).
# The real helpers are taken from numpy's own ``__reduce__`` output so this
# works with numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) alike.

_np_reconstruct = np.empty(0).__reduce__()[0]
_np_scalar = np.float32(0).__reduce__()[0]
_np_frombuffer = np.empty(0).__reduce_ex__(5)[0]

_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex
_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1")
_RAW = (bytes, bytearray)


class _NdarrayMarker:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` may use it.

    The real class is not returned because calling it with a ``buffer`` argument
    can build object arrays over raw bytes (forged pointers)."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        raise _Refused("numpy.ndarray called directly (it can map arrays onto raw bytes)")

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()


def _checked_dtype(dt):
    """Return ``dt`` if it is a plain numeric numpy dtype, else refuse."""
    if (
        not isinstance(dt, np.dtype)
        or dt.kind not in _NUMERIC_KINDS
        or dt.hasobject
        or dt.fields is not None
        or dt.subdtype is not None
    ):
        raise _Refused(f"numpy dtype {dt!r}")
    return dt


def _make_dtype(spec, align=False, copy=True):
    """``numpy.dtype`` for pickles: a type string such as 'f4' only.

    Always a fresh copy (``copy=True``) so a later BUILD cannot alter numpy's
    shared built-in dtype objects."""
    if not isinstance(spec, str):
        raise _Refused(f"numpy.dtype({type(spec).__name__})")
    try:
        dt = np.dtype(spec, bool(align), True)
    except TypeError as exc:
        raise _Refused(f"numpy.dtype({spec!r})") from exc
    return _checked_dtype(dt)


def _scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numpy scalar from its raw bytes."""
    if not isinstance(data, (bytes, str)):  # str: python 2 bytes read as latin1
        raise _Refused(f"numpy scalar from {type(data).__name__}")
    return _np_scalar(_checked_dtype(dtype), data)


def _frombuffer(buf, dtype, shape, order):
    """``numpy.core.numeric._frombuffer`` (pickle protocol 5 arrays)."""
    if not isinstance(buf, _RAW):
        raise _Refused(f"numpy _frombuffer of {type(buf).__name__}")
    return _np_frombuffer(buf, _checked_dtype(dtype), shape, order)


def _text_or_bytes_only(factory):
    """Wrap ``bytes``/``bytearray``: pickles pass text or bytes, never a size
    (``bytes(10**12)`` would let a few pickle bytes allocate a terabyte)."""

    def build(*args):
        if len(args) > 2 or (args and not isinstance(args[0], (str,) + _RAW)):
            raise _Refused(f"builtins.{factory.__name__} with these arguments")
        if len(args) == 2 and args[1] not in _LATIN1:
            raise _Refused(f"builtins.{factory.__name__} with encoding {args[1]!r}")
        return factory(*args)

    return build


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as python 3 uses it to pickle bytes at protocol <= 2:
    str -> latin1 bytes. Other codecs (zlib, bz2, ...) are refused."""
    if not isinstance(text, str) or encoding not in _LATIN1:
        raise _Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_numpy_modules = ("numpy.core", "numpy._core")  # numpy 1.x / 2.x names

# (module, name) -> what the pickle gets instead of importing it.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "bytes"): _text_or_bytes_only(bytes),
    ("builtins", "bytearray"): _text_or_bytes_only(bytearray),
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _make_dtype,
}
_RECONSTRUCT = object()  # placeholder: the unpickler supplies its own method
for _mod in _numpy_modules:
    _ALLOWED[(_mod + ".multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_mod + ".multiarray", "scalar")] = _scalar
    _ALLOWED[(_mod + ".numeric", "_frombuffer")] = _frombuffer

# Python 2 pickles (MSRA R-101.pkl, old Detectron blobs) spell builtins
# ``__builtin__``; map the module name only, the name check stays the same.
_PY2_MODULES = {"__builtin__": "builtins"}


class _WeightsUnpickler(pickle._Unpickler):
    """Unpickler that admits only weights data.

    Built on the pure-python unpickler because BUILD (``obj.__setstate__(state)``)
    must be checked too: numpy's dtype/ndarray ``__setstate__`` trust their state
    (see the note above ``_np_reconstruct``), and the C unpickler offers no hook
    for BUILD. Speed is fine: a checkpoint is a few hundred arrays, whose bytes
    are read in one piece each.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file):
        super().__init__(file, encoding="latin1")
        # arrays made by _reconstruct and not yet filled by BUILD, by id
        self._unfilled = {}

    def find_class(self, module, name):
        key = (_PY2_MODULES.get(module, module), name)
        if key not in _ALLOWED:
            raise _Refused(f"{module}.{name}")
        found = _ALLOWED[key]
        return self._reconstruct if found is _RECONSTRUCT else found

    def _reconstruct(self, subtype, shape, typecode):
        """``numpy.core.multiarray._reconstruct``: an empty plain ndarray that
        BUILD then fills, once (refilling would free memory a view might use)."""
        if subtype is not _NDARRAY:
            raise _Refused(f"numpy _reconstruct of {subtype!r}")
        arr = _np_reconstruct(np.ndarray, (0,), b"b")
        self._unfilled[id(arr)] = arr
        return arr

    def _refuse_opcode(self):
        raise _Refused("a pickle opcode that weights never use (extension code / buffer)")

    # EXT1/2/4 read copyreg's process-wide cache, which bypasses find_class;
    # READONLY_BUFFER could expose an array's memory to _frombuffer.
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.READONLY_BUFFER):
        dispatch[_op[0]] = _refuse_opcode
    del _op

    def persistent_load(self, pid):
        raise _Refused(f"a persistent id ({type(pid).__name__})")

    def load_build(self):
        """BUILD only on numpy arrays and dtypes, with their state checked."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            if self._unfilled.pop(id(inst), None) is not inst:
                raise _Refused("setting the state of a numpy array twice")
            # (version, shape, dtype, is_fortran, rawdata) or without version.
            if not (isinstance(state, tuple) and len(state) in (4, 5)):
                raise _Refused("numpy.ndarray state of unknown layout")
            _checked_dtype(state[-3])
            if not isinstance(state[-1], (str, bytes, bytearray)):
                raise _Refused(f"numpy.ndarray data as {type(state[-1]).__name__}")
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            # (version, byteorder, subarray, names, fields, elsize, alignment,
            #  flags[, metadata]); a numeric dtype only carries its byte order,
            # so apply just that, keeping numpy's own flags.
            if not (
                isinstance(state, tuple)
                and len(state) in (8, 9)
                and isinstance(state[1], str)
                and state[1] in ("<", ">", "|", "=")
                and all(part is None for part in state[2:5] + state[8:])
            ):
                raise _Refused(f"numpy.dtype state {state!r:.80}")
            inst.__setstate__((3, state[1], None, None, None, -1, -1, inst.flags))
            _checked_dtype(inst)
        else:
            raise _Refused(f"setting the state of a {type(inst).__name__}")

    dispatch[pickle.BUILD[0]] = load_build


def _display_name(source, name):
    if name is not None:
        return str(name)
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    return str(getattr(source, "name", "<stream>"))


def load_pickle_weights(path_or_file, name=None):
    """Read a Detectron2-style ``.pkl`` checkpoint without running any code.

    Accepts a path or a binary file object; ``name`` is the file name used in
    error messages (default: the path, or the file object's ``name``).
    Uses ``encoding="latin1"`` as Detectron2 does, so python 2 pickles (MSRA
    ImageNet models) load with their byte strings as latin1 text, which numpy
    turns back into the raw array bytes.

    Raises :class:`UnsafeCheckpointError` if the pickle asks for anything but
    weights data, :class:`~sact_det.utils.errors.InputValueError` naming the file if
    it is truncated or corrupt.
    """
    shown = _display_name(path_or_file, name)
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return load_pickle_weights(f, shown)
    try:
        return _WeightsUnpickler(path_or_file).load()
    except _Refused as exc:
        raise UnsafeCheckpointError(shown, str(exc)) from None
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # anything else means the bytes are not a valid pickle
        raise InputValueError(
            f"{shown}: cannot read checkpoint (truncated or corrupt pickle): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _first_line(text):
    return (text.strip().splitlines() or [""])[0]


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def load_torch_weights(path):
    """``torch.load(path, map_location="cpu", weights_only=True)``, with clear errors.

    torch's weights-only refusal (a long ``UnpicklingError``) becomes an
    :class:`UnsafeCheckpointError` naming the file and the refused global; a
    truncated or corrupt file becomes an
    :class:`~sact_det.utils.errors.InputValueError` naming the file.
    """
    import torch  # lazy: .pkl loading must not need torch

    shown = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    if isinstance(path, (str, bytes, os.PathLike)) and os.path.isfile(path) and not is_binary_checkpoint(path):
        # torch would read text or other junk as pickle opcodes and "refuse" them
        raise InputValueError(f"{shown}: cannot read checkpoint: not a file written by torch.save "
                              "(neither a zip archive nor a binary pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise InputValueError(f"{shown}: cannot read checkpoint: {_first_line(text)}") from exc
        match = _GLOBAL_RE.search(text)
        if match:
            what = match.group(1)
        else:  # e.g. an unsupported opcode: keep torch's specific reason, which
            # is the last line before its "Check the documentation..." footer
            lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
            lines = [ln for ln in lines if not ln.startswith("Check the documentation")]
            reason = lines[-1] if lines else "no reason given"
            what = f"something torch's weights-only loader refuses ({reason})"
        raise UnsafeCheckpointError(shown, what) from None
    except (EOFError, RuntimeError) as exc:
        raise InputValueError(
            f"{shown}: cannot read checkpoint (truncated or corrupt file): "
            f"{type(exc).__name__}: {_first_line(str(exc))}"
        ) from exc


def is_binary_checkpoint(path):
    """Whether the file is a zip archive (``torch.save``) or starts like a binary
    pickle (protocol 2 or later: Detectron2, Caffe2 and legacy torch files)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the PROTO opcode


def load_checkpoint_file(path):
    """Read a checkpoint file safely: ``.pkl`` via :func:`load_pickle_weights`,
    anything else via :func:`load_torch_weights`. Returns what the file holds,
    unchanged (Detectron2's ``blobs``/``model`` handling is up to the caller)."""
    if os.fsdecode(path).endswith(".pkl"):
        return load_pickle_weights(path)
    return load_torch_weights(path)
