"""The authors' TensorFlow ImageNet checkpoints as sact-det classifiers
(``tools/convert_sact_tf_checkpoint.py``).

Reads a TF checkpoint (``.index`` + ``.data-*``) with TensorFlow's own reader,
maps every variable by :mod:`sact_det.apps.tf_variables`, refuses a checkpoint
with a variable it cannot map or a parameter left without a value, and writes

* ``NAME.pth``: ``{"model": state dict, "__author__", "matching_heuristics": False}``,
  readable with ``torch.load(weights_only=True)``;
* ``NAME.yaml``: the classifier config of the detected network (halting type,
  units per block, widths, classes) and the official input convention (RGB
  scaled to [-1, 1]), with ``MODEL.WEIGHTS`` set to ``NAME.pth``.

The released ImageNet models have 1001 outputs: TF-Slim's ImageNet labels are 1-1000
for the synsets in sorted order and 0 is "background", which no training image
has. Unless asked to keep it, the background output is left out, so that
output ``i`` is the ``i``-th class of an ImageNet folder in sorted order (what
``DATASETS.IMAGE_FOLDERS`` and the ``imagenet_*`` datasets number ``i``).

TensorFlow is imported here only, and only when a checkpoint is read: it is
the optional extra ``sact-det[tf]``.
"""
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import yaml

from sact_det.apps.tf_variables import (OfficialModel, detect_model, is_training_only, listed,
                                        official_variables, to_pytorch_layout)
from sact_det.config import UNITS_PER_DEPTH
from sact_det.config.model_zoo import CONFIG_ROOT
from sact_det.utils.errors import InputError, InputFileNotFoundError, InputValueError
from sact_det.utils.files import atomic_path

__all__ = ["Conversion", "read_tf_checkpoint", "convert_variables", "classifier_config", "convert_official_checkpoint"]

logger = logging.getLogger("sact_det")

AUTHOR = "mfigurnov/sact (TensorFlow), converted by sact-det"
# TF-Slim's ImageNet: 1000 synsets (labels 1-1000) and a background class 0.
IMAGENET_WITH_BACKGROUND = 1001
# The shipped config each converted network's config inherits, by halting type
# (the ImageNet-stage classifiers' configs, sact_det/configs/imagenet).
BASE_CONFIGS = {"sact": "imagenet/sact_R101_preact.yaml", "act": "imagenet/act_R101_preact.yaml",
                "none": "imagenet/dense_R101_preact.yaml"}
# The official input: RGB in [-1, 1], i.e. (x - 127.5) / 127.5 of 0-255 pixels.
OFFICIAL_PIXEL_MEAN = OFFICIAL_PIXEL_STD = (127.5, 127.5, 127.5)


@dataclass
class Conversion:
    """A converted checkpoint: the detected network, the PyTorch state dict, its
    number of classes, and the training-only variables that were left out."""
    model: OfficialModel
    state_dict: Dict[str, torch.Tensor]
    num_classes: int
    ignored: List[str]


def _checkpoint_prefix(path: str) -> str:
    """The prefix TF's reader takes, also from the name of one of its files
    (``model.ckpt-123.index`` or ``.data-00000-of-00001``)."""
    for suffix in (".index", ".meta"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    if ".data-" in os.path.basename(path):
        return path[: path.rindex(".data-")]
    return path


def _load_triton_first() -> None:
    """Imports torch's Triton, if installed: imported after TensorFlow (2.21), Triton
    (3.x, which torchvision and Detectron2 load) crashes the process."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pass


def read_tf_checkpoint(path: str):
    """TF's checkpoint reader of ``path`` (a checkpoint prefix, one of its files,
    or a directory with a ``checkpoint`` file) and its variables (name -> shape)."""
    try:
        # TF's start-up notices (oneDNN, CPU features) say nothing about the file; reading
        # a checkpoint computes nothing, so oneDNN's kernels are not needed either.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        _load_triton_first()
        import tensorflow as tf
    except ImportError:
        raise InputError('reading a TensorFlow checkpoint needs TensorFlow: pip install "sact-det[tf]"') from None
    prefix = _checkpoint_prefix(path)
    if not os.path.isdir(prefix) and not os.path.exists(prefix + ".index"):
        raise InputFileNotFoundError(f"no TensorFlow checkpoint at {path!r}: expected a directory with a "
                                     "'checkpoint' file, or a prefix PREFIX with PREFIX.index beside it")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # TF's own errors (NotFoundError, DataLossError, ValueError): name the file
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputValueError(f"cannot read {path!r} as a TensorFlow checkpoint: {type(e).__name__}: "
                              f"{first_line}") from None
    return reader, {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}


def _check_variables(shapes: Mapping[str, Sequence[int]], expected) -> None:
    """Refuses, naming them, the variables that map nowhere, the expected ones
    that are absent and those of the wrong shape."""
    unmappable = sorted(n for n in shapes if n not in expected and not is_training_only(n))
    missing = [n for n in expected if n not in shapes]
    misshapen = [f"{n} {list(shapes[n])} (expected {list(v.shape)})" for n, v in expected.items()
                 if n in shapes and tuple(shapes[n]) != v.shape]
    problems = []
    if unmappable:
        problems.append(f"{len(unmappable)} variable(s) that map to no parameter: {listed(unmappable)}")
    if missing:
        problems.append(f"{len(missing)} parameter(s) without a value, absent: {listed(missing)}")
    if misshapen:
        problems.append(f"{len(misshapen)} variable(s) of the wrong shape: {listed(misshapen)}")
    if problems:
        raise InputValueError("not a checkpoint of the official network it resembles; it has " + "; ".join(problems))


def convert_variables(reader, shapes: Mapping[str, Sequence[int]], keep_background: bool = False) -> Conversion:
    """The PyTorch state dict of a checkpoint (``reader.get_tensor(name)``; its
    variables' shapes), after :func:`detect_model` and the checks. An ImageNet
    classifier's background output goes unless ``keep_background``."""
    model = detect_model(shapes)
    expected = official_variables(model)
    _check_variables(shapes, expected)
    state = {}
    for name, variable in expected.items():
        value = np.asarray(reader.get_tensor(name))
        if not np.issubdtype(value.dtype, np.floating):
            raise InputValueError(f"variable {name} holds {value.dtype} values, expected floating point")
        state[variable.target] = torch.from_numpy(to_pytorch_layout(value.astype(np.float32), variable.layout))
    num_classes = model.num_classes
    if num_classes == IMAGENET_WITH_BACKGROUND and not keep_background:
        for key in ("linear.weight", "linear.bias"):
            state[key] = state[key][1:].clone()
        num_classes -= 1
    return Conversion(model=model, state_dict=state, num_classes=num_classes,
                      ignored=sorted(n for n in shapes if is_training_only(n)))


def classifier_config(conversion: Conversion, weights: str) -> Dict:
    """The config (as a dict for YAML) of the classifier that ``conversion``'s
    weights (at ``weights``) fill: the network as detected, the official input."""
    model = conversion.model
    width, res2 = model.block_channels(1)
    resnets = {"STEM_OUT_CHANNELS": model.stem, "RES2_OUT_CHANNELS": res2, "WIDTH_PER_GROUP": width}
    depth = {units: depth for depth, units in UNITS_PER_DEPTH.items()}.get(model.units[:3])
    if depth:
        resnets["DEPTH"] = depth
    return {
        "_BASE_": os.path.join(CONFIG_ROOT, BASE_CONFIGS[model.halting]),
        "MODEL": {
            "META_ARCHITECTURE": "SACTClassifier",
            "WEIGHTS": os.path.abspath(weights),
            "PIXEL_MEAN": list(OFFICIAL_PIXEL_MEAN), "PIXEL_STD": list(OFFICIAL_PIXEL_STD),
            "RESNETS": resnets,
            "SACT": {"TYPE": model.halting, "UNIT_TYPE": "pre_activation", "HALTING_NORM": True,
                     "HALTING_PADDING": "zeros", "NUM_UNITS": list(model.units[:3]),
                     "RES5_NUM_UNITS": model.units[3]},
            "CLASSIFIER": {"NUM_CLASSES": conversion.num_classes},
        },
        "INPUT": {"FORMAT": "RGB"},
    }


def convert_official_checkpoint(source: str, destination: str, keep_background: bool = False
                                ) -> Tuple[Conversion, str]:
    """Writes ``destination`` (``.pth``) and its config (``.yaml`` beside it)
    from the official checkpoint ``source``; returns the conversion and the config's path."""
    reader, shapes = read_tf_checkpoint(source)
    conversion = convert_variables(reader, shapes, keep_background)
    if conversion.ignored:
        logger.info("left out %d training-only variable(s): %s", len(conversion.ignored), listed(conversion.ignored))
    config = os.path.splitext(destination)[0] + ".yaml"
    payload = {"model": conversion.state_dict, "__author__": AUTHOR, "matching_heuristics": False}
    with atomic_path(destination) as temporary:
        torch.save(payload, temporary)
    with atomic_path(config) as temporary, open(temporary, "w") as f:
        f.write(f"# The authors' {conversion.model.halting} network from {os.path.abspath(source)}, "
                "converted by tools/convert_sact_tf_checkpoint.py\n")
        yaml.safe_dump(classifier_config(conversion, destination), f, sort_keys=False)
    return conversion, config
