"""Tests for safe_load: hostile checkpoints are refused without running code,
real Detectron2 / MSRA / torchvision-converted weights still load."""

import ast
import collections
import copyreg
import io
import os
import pickle
import pickletools
import struct
import subprocess

import numpy as np
import pytest
import torch

from sact_det.utils import safe_load
from sact_det.utils.errors import InputError
from sact_det.utils.safe_load import (UnsafeCheckpointError, load_checkpoint_file, load_pickle_weights,
                                      load_torch_weights)

# ---------------------------------------------------------------- helpers


class CallsOnLoad:
    """Pickles as ``func(*args)``: what an attacker puts in a checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write(path, data):
    path.write_bytes(data)
    return path


def _d2_weights():
    """What Detectron2 model zoo / convert-torchvision-to-d2.py write."""
    rng = np.random.default_rng(0)
    model = {
        "stem.conv1.weight": rng.random((64, 3, 7, 7)).astype(np.float32),
        "res2.0.conv1.weight": rng.random((64, 64, 1, 1)).astype(np.float32),
        "res2.0.conv1.norm.running_mean": rng.random(64).astype(np.float32),
        "res2.0.conv1.norm.num_batches_tracked": np.array(0, dtype=np.int64),
        "res5.2.conv3.weight_fortran": np.asfortranarray(rng.random((4, 5))),
        "res4.0.strided_view": rng.random(20).astype(np.float16)[::2],
        "empty": np.zeros((0, 3), dtype=np.float32),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
    }
    return {"model": model, "__author__": "torchvision", "matching_heuristics": True}


def _assert_same(got, want):
    if isinstance(want, np.ndarray):
        assert type(got) is np.ndarray
        # numpy itself unpickles big-endian arrays as native-order ones
        assert got.dtype.newbyteorder("=") == want.dtype.newbyteorder("=")
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, dict):
        assert type(got) is type(want) and list(got) == list(want)
        for key in want:
            _assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
    else:
        assert type(got) is type(want) and got == want


# A python 2 pickle written by hand, opcode by opcode, the way python 2's
# cPickle (protocol 2) stored numpy data: byte strings as BINSTRING ('T'),
# which python 3 reads as latin1 text; dtypes as dtype('f4', 0, 1) + state.
def _py2(obj):
    if obj is None:
        return b"N"
    if obj is True or obj is False:
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, str):
        obj = obj.encode("ascii")
    if isinstance(obj, bytes):  # a python 2 ``str``
        return b"T" + struct.pack("<I", len(obj)) + obj
    if isinstance(obj, tuple):
        return b"(" + b"".join(map(_py2, obj)) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(map(_py2, obj)) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.dtype):
        state = (3, obj.str[0], None, None, None, -1, -1, 0)
        return b"cnumpy\ndtype\n" + _py2((obj.str[1:], 0, 1)) + b"R" + _py2(state) + b"b"
    if isinstance(obj, np.ndarray):
        state = (1, obj.shape, obj.dtype, False, obj.tobytes())
        return (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n"
                + _py2((0,)) + _py2(b"b") + b"tR" + _py2(state) + b"b")
    if isinstance(obj, np.generic):
        return (b"cnumpy.core.multiarray\nscalar\n"
                + _py2((obj.dtype, obj.tobytes())) + b"R")
    if isinstance(obj, set):
        return b"c__builtin__\nset\n(" + _py2(sorted(obj)) + b"tR"
    raise TypeError(obj)


def py2_pickle(obj):
    return b"\x80\x02" + _py2(obj) + b"."


# ---------------------------------------------------------------- hostile files


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_os_system_is_refused_and_not_run(tmp_path, ext):
    marker = tmp_path / "MARKER"
    payload = {"model": {"w": CallsOnLoad(os.system, f"touch {marker}")}}
    path = tmp_path / f"model{ext}"
    if ext == ".pkl":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)

    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_file(str(path))

    msg = str(info.value)
    assert str(path) in msg and f"{os.system.__module__}.system" in msg
    assert "\n" not in msg and "refuses to load" in msg
    assert info.value.refused == f"{os.system.__module__}.system"
    assert not marker.exists()


def test_legacy_torch_format_is_refused_too(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "old.pth"
    torch.save({"w": CallsOnLoad(os.system, f"touch {marker}")}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="old.pth.*posix.system|old.pth.*nt.system"):
        load_torch_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "body, reason",
    [(b"\x80\x02\x82\x01.", "Unsupported operand"),  # EXT1: not a global
     (b"\x80\x02X\x01\x00\x00\x00a}b.", "Can only build")],  # BUILD on a str
)
def test_torch_refusal_without_a_global_keeps_torch_reason(tmp_path, body, reason):
    # legacy torch.save layout: magic, protocol, sys info, then the object
    head = b"".join(pickle.dumps(x, 2) for x in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    path = _write(tmp_path / "odd.pth", head + body)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_torch_weights(str(path))
    assert str(info.value).startswith(f"{path}: refuses to load")
    assert reason in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "payload, refused",
    [
        (lambda m: CallsOnLoad(open, str(m), "w"), "io.open"),
        (lambda m: CallsOnLoad(eval, "1"), "builtins.eval"),
        (lambda m: CallsOnLoad(exec, "1"), "builtins.exec"),
        (lambda m: CallsOnLoad(getattr, CallsOnLoad(__import__, "os"), "system"), "builtins.getattr"),
        (lambda m: CallsOnLoad(__import__, "os"), "builtins.__import__"),
        (lambda m: CallsOnLoad(subprocess.call, ["touch", str(m)]), "subprocess.call"),
        (lambda m: CallsOnLoad(copyreg._reconstructor, object, object, None),
         "copyreg._reconstructor"),
        (lambda m: torch.zeros(2), "torch._utils._rebuild_tensor_v2"),
        (lambda m: collections.Counter("ab"), "collections.Counter"),
        (lambda m: np.ma.masked_array([1, 2]), "numpy.ma.core._mareconstruct"),
    ],
)
def test_other_callables_are_refused(tmp_path, payload, refused):
    marker = tmp_path / "MARKER"
    path = _write(tmp_path / "x.pkl", pickle.dumps({"a": payload(marker)}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=rf"x\.pkl: .*{refused}"):
        load_pickle_weights(str(path))
    assert not marker.exists()


def test_py2_spelled_builtins_are_still_checked(tmp_path):
    # fix_imports turns builtins.eval into __builtin__.eval
    data = pickle.dumps(CallsOnLoad(eval, "1"), protocol=2, fix_imports=True)
    assert b"__builtin__\neval" in data
    with pytest.raises(UnsafeCheckpointError, match="__builtin__.eval"):
        load_pickle_weights(io.BytesIO(data), name="py2.pkl")


def test_object_arrays_are_refused():
    # an object array's data are pointers; only numeric dtypes are accepted
    data = pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=r"w\.pkl: .*dtype\('O'\)"):
        load_pickle_weights(io.BytesIO(data), name="w.pkl")


def test_ndarray_cannot_be_called_with_a_raw_buffer():
    # numpy.ndarray((1,), dtype('O'), b"AAAAAAAA") would make forged pointers
    data = b"\x80\x02cnumpy\nndarray\n" + _py2(((1,), np.dtype("f8"), b"A" * 8)) + b"R."
    with pytest.raises(UnsafeCheckpointError, match=r"x\.pkl: .*numpy\.ndarray called"):
        load_pickle_weights(io.BytesIO(data), name="x.pkl")


def _dtype_with_state(spec, state):
    return (b"\x80\x02cnumpy\ndtype\n" + _py2((spec, 0, 1)) + b"R" + _py2(state) + b"b.")


def test_dtype_state_cannot_add_fields():
    # names/fields in a dtype's state, with zeroed flags, hide object fields
    for field_type in ("f8", "O"):
        state = (3, "|", None, ("a",), {"a": (np.dtype(field_type), 0)}, 8, 1, 0)
        for spec in ("V8", "f8"):
            data = _dtype_with_state(spec, state)
            pickletools.dis(data, out=io.StringIO())  # a well-formed pickle
            with pytest.raises(UnsafeCheckpointError, match=r"d\.pkl: .*dtype"):
                load_pickle_weights(io.BytesIO(data), name="d.pkl")


def test_dtype_state_flags_are_not_trusted():
    # 63 would claim "holds objects"; the loader keeps numpy's own flags
    got = load_pickle_weights(io.BytesIO(_dtype_with_state("f8", (
        3, ">", None, None, None, -1, -1, 63))), name="d.pkl")
    assert got == np.dtype(">f8") and got.flags == np.dtype("f8").flags
    assert np.dtype("f8").byteorder == "="  # numpy's shared dtype untouched


def test_array_state_cannot_be_set_twice():
    one = _py2((1, (2,), np.dtype("f4"), False, b"\0" * 8))
    data = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n"
            + _py2((0,)) + _py2(b"b") + b"tR" + one + b"b" + one + b"b.")
    with pytest.raises(UnsafeCheckpointError, match="twice"):
        load_pickle_weights(io.BytesIO(data), name="t.pkl")


def test_extension_codes_are_refused():
    # EXT opcodes read copyreg's process-wide cache, which skips find_class
    copyreg.add_extension("posix", "system", 0x7EADBE)
    try:
        data = b"\x80\x02\x84" + struct.pack("<i", 0x7EADBE) + b"(T\x04\x00\x00\x00truetR."
        with pytest.raises(UnsafeCheckpointError, match="e.pkl"):
            load_pickle_weights(io.BytesIO(data), name="e.pkl")
    finally:
        copyreg.remove_extension("posix", "system", 0x7EADBE)


def test_codecs_other_than_latin1_are_refused():
    data = (b"\x80\x02c_codecs\nencode\n(X\x02\x00\x00\x00hiX\x04\x00\x00\x00zlibtR.")
    with pytest.raises(UnsafeCheckpointError, match="zlib"):
        load_pickle_weights(io.BytesIO(data), name="c.pkl")


def test_bytes_from_a_size_is_refused():
    data = b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R."
    with pytest.raises(UnsafeCheckpointError, match="bytes"):
        load_pickle_weights(io.BytesIO(data), name="b.pkl")


# ---------------------------------------------------------------- real files


@pytest.mark.parametrize("protocol", [0, 2, 4, 5, pickle.DEFAULT_PROTOCOL])
def test_detectron2_model_zoo_format_loads(tmp_path, protocol):
    want = _d2_weights()
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump(want, f, protocol=protocol)
    got = load_checkpoint_file(str(path))
    _assert_same(got, want)


@pytest.mark.parametrize("protocol", [2, 4])
def test_msra_style_flat_dict_loads(tmp_path, protocol):
    rng = np.random.default_rng(1)
    want = {
        "conv1_w": rng.random((64, 3, 7, 7)).astype(np.float32),
        "res_conv1_bn_s": rng.random(64).astype(np.float32),
        "res_conv1_bn_b": rng.random(64).astype(np.float32),
        "fc1000_b": rng.random(1000).astype(np.float32),
    }
    path = _write(tmp_path / "R-50.pkl", pickle.dumps(want, protocol=protocol))
    _assert_same(load_pickle_weights(path), want)


def test_python2_pickle_loads(tmp_path):
    rng = np.random.default_rng(2)
    blobs = {
        "conv1_w": rng.random((8, 3, 7, 7)).astype(np.float32),
        "res2_0_branch2a_w": rng.random((4, 8, 1, 1)).astype(np.float32),
        "pred_b": np.arange(5, dtype=np.int64),
        "flag": np.array([True, False]),
        "lr": np.float32(0.02),
    }
    data = py2_pickle({"blobs": blobs, "__author__": "MSRA", "ids": {1, 2},
                       "shape": (3, [1.5, None])})
    listing = io.StringIO()
    pickletools.dis(data, out=listing)
    assert "BINSTRING" in listing.getvalue()  # python 2 byte strings
    path = _write(tmp_path / "R-101.pkl", data)

    got = load_pickle_weights(path)
    _assert_same(got["blobs"], blobs)
    assert got["__author__"] == "MSRA" and got["ids"] == {1, 2}
    assert got["shape"] == (3, [1.5, None])


def test_protocol2_fix_imports_pickle_loads():
    # what python 3 writes for python 2 readers: __builtin__ names, _codecs.encode
    want = {"w": np.ones((2, 2), np.float32), "s": {1, 2}, "f": frozenset("a"),
            "b": b"\x00\xffraw", "e": b"", "ba": bytearray(b"xy"), "c": 1 + 2j,
            "sl": slice(1, 5, 2)}
    data = pickle.dumps(want, protocol=2, fix_imports=True)
    text = io.StringIO()
    pickletools.dis(data, out=text)
    assert "__builtin__ set" in text.getvalue() and "_codecs encode" in text.getvalue()
    got = load_pickle_weights(io.BytesIO(data), name="fix.pkl")
    _assert_same(got["w"], want["w"])
    assert {k: v for k, v in got.items() if k != "w"} == {
        k: v for k, v in want.items() if k != "w"}


def test_numpy2_module_names_load():
    # numpy 2 writes numpy._core.multiarray / numpy._core.numeric
    want = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.int64(7)}
    data = pickle.dumps(want, protocol=2).replace(b"numpy.core.", b"numpy._core.")
    assert b"numpy._core.multiarray" in data
    _assert_same(load_pickle_weights(io.BytesIO(data), name="np2.pkl"), want)

    w, raw = want["w"], want["w"].tobytes()  # protocol 5 style: _frombuffer
    data = (b"\x80\x05cnumpy._core.numeric\n_frombuffer\n(B" + struct.pack("<I", len(raw))
            + raw + _py2(w.dtype) + _py2(w.shape) + _py2("C") + b"tR.")
    _assert_same(load_pickle_weights(io.BytesIO(data), name="np2.pkl"), w)


def test_scalars_nested_containers_and_ordered_dict_load():
    want = {
        "scalars": [np.float32(1.0), np.float64(2.5), np.int64(-3), np.bool_(True),
                    np.complex64(1 - 1j), np.uint8(255)],
        "nested": ([1, (2.0, "three", None)], {"k": [np.zeros(2, np.int32)]}),
        "od": collections.OrderedDict([("b", 1), ("a", np.ones(1))]),
        "big": 2 ** 100,
    }
    for protocol in (0, 2, 4, 5):
        got = load_pickle_weights(io.BytesIO(pickle.dumps(want, protocol=protocol)),
                                  name="s.pkl")
        _assert_same(got, want)


def test_file_object_and_name(tmp_path):
    path = _write(tmp_path / "w.pkl", pickle.dumps({"a": 1}))
    with open(path, "rb") as f:
        assert load_pickle_weights(f) == {"a": 1}
    with pytest.raises(UnsafeCheckpointError, match="^shown.pkl: "):
        load_pickle_weights(io.BytesIO(pickle.dumps(CallsOnLoad(eval, "1"))),
                            name="shown.pkl")


def test_torch_state_dict_loads(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Linear(4, 2))
    want = {"model": model.state_dict(), "iteration": 99}
    path = tmp_path / "model_final.pth"
    torch.save(want, path)
    got = load_checkpoint_file(str(path))
    assert got["iteration"] == 99 and list(got["model"]) == list(want["model"])
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value)


# ---------------------------------------------------------------- broken files


@pytest.mark.parametrize("cut", [0, 1, 10, 0.5, -1])
def test_truncated_pickle_names_the_file(tmp_path, cut):
    data = pickle.dumps(_d2_weights(), protocol=2)
    n = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    path = _write(tmp_path / "cut.pkl", data[:n])
    with pytest.raises(ValueError, match=r"cut\.pkl: cannot read checkpoint") as info:
        load_checkpoint_file(str(path))
    assert not isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize("zipfile_format", [True, False])
@pytest.mark.parametrize("cut", [0, 10, 0.5, -5])
def test_truncated_torch_file_names_the_file(tmp_path, zipfile_format, cut):
    full = tmp_path / "full.pth"
    torch.save({"w": torch.ones(3, 3)}, full,
               _use_new_zipfile_serialization=zipfile_format)
    data = full.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    path = _write(tmp_path / "cut.pth", data[:n])
    with pytest.raises(ValueError, match=r"cut\.pth: cannot read checkpoint"):
        load_checkpoint_file(str(path))


def test_module_needs_neither_torch_nor_detectron2():
    """Importable by every layer: at module level only the standard library,
    numpy and the project's error classes; torch only inside the .pth loader."""
    with open(safe_load.__file__) as f:
        tree = ast.parse(f.read())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_level.add(node.module)
    assert top_level == {"collections", "os", "pickle", "re", "zipfile", "numpy", "sact_det.utils.errors"}
    lazy = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) and node not in tree.body
            for alias in node.names}
    assert lazy == {"torch"}


def test_refusals_are_input_errors(tmp_path):
    """The tools end an InputError with one line and exit status 2."""
    path = _write(tmp_path / "x.pkl", pickle.dumps(CallsOnLoad(eval, "1")))
    with pytest.raises(InputError):
        load_pickle_weights(path)
    with pytest.raises(InputError):
        load_pickle_weights(_write(tmp_path / "cut.pkl", b"\x80\x02}"))
