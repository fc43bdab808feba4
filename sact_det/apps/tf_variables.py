"""The variables of the authors' TensorFlow ImageNet models (``mfigurnov/sact``)
and where each one goes in sact-det's pre-activation classifier.

The official ``imagenet_model.py`` builds a pre-activation ResNet ("v2") with
TF-Slim under the scope ``resnet_v2``; ``resnet_act.py`` wraps each of its four
blocks in ACT or SACT (same variable names) and adds a halting branch to every
unit but a block's last. Every model variable is listed by
:func:`official_variables` from four numbers (units per block, widths, classes)
and the halting type, each with its PyTorch name and layout:

=====================================================  ===============================================
TensorFlow (B = block 1-4, U = unit 1-n)                PyTorch
=====================================================  ===============================================
``resnet_v2/conv1/{weights,biases}``                    ``backbone.stem.conv1.{weight,bias}``
``blockB/unit_U/bottleneck_v2/preact/*``               ``backbone.res{B+1}.{U-1}.preact.*``
``.../bottleneck_v2/conv{1,2}/weights``, ``/BatchNorm``  ``...conv{1,2}.weight``, ``...conv{1,2}.norm.*``
``.../bottleneck_v2/{conv3,shortcut}/{weights,biases}``   ``...{conv3,shortcut}.{weight,bias}``
``blockB/unit_U/halting_proba/local_bn/*``             ``backbone.res{B+1}.halting.{U-1}.local_norm.*``
``.../halting_proba/local_conv/weights`` (SACT)         ``...spatial_logit.weight`` (W~ of eq. 14)
``.../halting_proba/local_conv/biases`` (SACT)          ``...bias`` (b of eq. 14)
``.../halting_proba/global_bn/*``                       ``...global_norm.*``
``.../halting_proba/global_conv/weights``               ``...global_logit.weight`` (W of eqs. 6, 14)
``.../halting_proba/global_conv/biases`` (ACT)          ``...bias`` (b of eq. 6)
``resnet_v2/postnorm/*``                                ``backbone.postnorm.*``
``resnet_v2/logits/{weights,biases}``                   ``linear.{weight,bias}``
=====================================================  ===============================================

(all TF names under ``resnet_v2/``). A batch norm's ``gamma, beta,
moving_mean, moving_variance`` become ``weight, bias, running_mean,
running_var``. Convolution kernels are HWIO and become OIHW; the 1x1
convolutions that act on a pooled vector (``global_conv``, ``logits``),
``[1, 1, C, K]``, become linear weights ``[K, C]``.

A raw training checkpoint also holds the optimiser's and the moving averages'
copies (:data:`TRAINING_ONLY`); nothing else is skipped.
"""
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from sact_det.utils.errors import InputValueError

__all__ = ["SCOPE", "TRAINING_ONLY", "OfficialModel", "Variable", "official_variables", "detect_model",
           "is_training_only", "to_pytorch_layout", "listed"]

SCOPE = "resnet_v2"
# Variables of a raw training checkpoint that are no model parameter (full-name patterns):
# the step counter, the momentum of every trainable variable, and the moving average
# of every model variable (imagenet_train.py's ExponentialMovingAverage, and of the loss).
TRAINING_ONLY = ("global_step", ".+/Momentum", ".+/ExponentialMovingAverage")
_TRAINING_ONLY = re.compile("|".join(f"(?:{p})" for p in TRAINING_ONLY))

# slim.batch_norm (center and scale) -> torch batch norm.
_BATCH_NORM = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
               ("moving_variance", "running_var"))
_UNIT = re.compile(rf"^{SCOPE}/block(\d+)/unit_(\d+)/")
_BOTTLENECK_CONV = re.compile(rf"^{SCOPE}/block(\d+)/unit_\d+/bottleneck_v2/conv[12]/")
NUM_BLOCKS = 4


@dataclass(frozen=True)
class OfficialModel:
    """What a checkpoint's names and shapes say about the network that wrote it."""
    halting: str  # "sact" (local_conv present), "act" (global branch only) or "none"
    units: Tuple[int, ...]  # residual units of blocks 1-4 (ResNet-101: 3, 4, 23, 3)
    bottleneck: int  # bottleneck width of block 1 (doubling per block); 64 in the released models
    stem: int  # channels of conv1 (hard-coded 64 in the official code)
    num_classes: int  # 1001 for ImageNet (class 0: background, TF-Slim's convention)

    def block_channels(self, block: int) -> Tuple[int, int]:
        """(bottleneck width, output channels) of block ``block`` (1-4)."""
        width = self.bottleneck * 2 ** (block - 1)
        return width, 4 * width


@dataclass(frozen=True)
class Variable:
    """One official variable: its TF shape, its PyTorch name, and how its values
    are laid out (``"conv"``: HWIO -> OIHW; ``"linear"``: ``[1, 1, C, K]`` ->
    ``[K, C]``; ``"vector"``: as is)."""
    shape: Tuple[int, ...]
    target: str
    layout: str


def is_training_only(name: str) -> bool:
    """Whether ``name`` is one of :data:`TRAINING_ONLY` (not a model parameter)."""
    return _TRAINING_ONLY.fullmatch(name) is not None


def _batch_norm(tf_scope: str, torch_prefix: str, channels: int) -> Iterable[Tuple[str, Variable]]:
    for tf_leaf, torch_leaf in _BATCH_NORM:
        yield f"{tf_scope}/{tf_leaf}", Variable((channels,), f"{torch_prefix}.{torch_leaf}", "vector")


def _conv(tf_scope: str, torch_prefix: str, kernel: int, cin: int, cout: int,
          bias: bool) -> Iterable[Tuple[str, Variable]]:
    yield f"{tf_scope}/weights", Variable((kernel, kernel, cin, cout), f"{torch_prefix}.weight", "conv")
    if bias:
        yield f"{tf_scope}/biases", Variable((cout,), f"{torch_prefix}.bias", "vector")


def _unit(model: OfficialModel, block: int, unit: int, cin: int) -> Iterable[Tuple[str, Variable]]:
    """A bottleneck unit (imagenet_model.bottleneck): preact BN, a projection
    shortcut where the channels change, conv1/conv2 with BN, conv3 with bias."""
    width, cout = model.block_channels(block)
    tf_scope, prefix = f"{SCOPE}/block{block}/unit_{unit}/bottleneck_v2", f"backbone.res{block + 1}.{unit - 1}"
    yield from _batch_norm(f"{tf_scope}/preact", f"{prefix}.preact", cin)
    if cin != cout:
        yield from _conv(f"{tf_scope}/shortcut", f"{prefix}.shortcut", 1, cin, cout, bias=True)
    yield from _conv(f"{tf_scope}/conv1", f"{prefix}.conv1", 1, cin, width, bias=False)
    yield from _batch_norm(f"{tf_scope}/conv1/BatchNorm", f"{prefix}.conv1.norm", width)
    yield from _conv(f"{tf_scope}/conv2", f"{prefix}.conv2", 3, width, width, bias=False)
    yield from _batch_norm(f"{tf_scope}/conv2/BatchNorm", f"{prefix}.conv2.norm", width)
    yield from _conv(f"{tf_scope}/conv3", f"{prefix}.conv3", 1, width, cout, bias=True)


def _halting(model: OfficialModel, block: int, unit: int) -> Iterable[Tuple[str, Variable]]:
    """A unit's halting branch (resnet_act.get_halting_proba{,_conv}): eq. (14)
    for SACT, eq. (6) for ACT, with a batch norm before each term."""
    channels = model.block_channels(block)[1]
    tf_scope, prefix = f"{SCOPE}/block{block}/unit_{unit}/halting_proba", f"backbone.res{block + 1}.halting.{unit - 1}"
    if model.halting == "sact":
        yield from _batch_norm(f"{tf_scope}/local_bn", f"{prefix}.local_norm", channels)
        yield f"{tf_scope}/local_conv/weights", Variable((3, 3, channels, 1), f"{prefix}.spatial_logit.weight", "conv")
        yield f"{tf_scope}/local_conv/biases", Variable((1,), f"{prefix}.bias", "vector")
    yield from _batch_norm(f"{tf_scope}/global_bn", f"{prefix}.global_norm", channels)
    yield f"{tf_scope}/global_conv/weights", Variable((1, 1, channels, 1), f"{prefix}.global_logit.weight", "linear")
    if model.halting == "act":
        yield f"{tf_scope}/global_conv/biases", Variable((1,), f"{prefix}.bias", "vector")


def official_variables(model: OfficialModel) -> Dict[str, Variable]:
    """Every model variable of the official network ``model`` describes (TF name ->
    :class:`Variable`), in the order the network uses them."""
    variables = dict(_conv(f"{SCOPE}/conv1", "backbone.stem.conv1", 7, 3, model.stem, bias=True))
    cin = model.stem
    for block, num_units in enumerate(model.units, start=1):
        for unit in range(1, num_units + 1):
            variables.update(_unit(model, block, unit, cin))
            cin = model.block_channels(block)[1]
            if model.halting != "none" and unit < num_units:  # the last unit halts by definition
                variables.update(_halting(model, block, unit))
    variables.update(_batch_norm(f"{SCOPE}/postnorm", "backbone.postnorm", cin))
    variables[f"{SCOPE}/logits/weights"] = Variable((1, 1, cin, model.num_classes), "linear.weight", "linear")
    variables[f"{SCOPE}/logits/biases"] = Variable((model.num_classes,), "linear.bias", "vector")
    return variables


def _last_dim(shapes: Mapping[str, Sequence[int]], scope: str, what: str) -> int:
    """The last dimension of the first variable under ``scope`` (its output channels)."""
    for name in sorted(shapes):
        if name.startswith(scope + "/") and len(shapes[name]) > 0:
            return int(shapes[name][-1])
    raise InputValueError(f"the checkpoint has no variable under {scope} ({what})")


def detect_model(shapes: Mapping[str, Sequence[int]]) -> OfficialModel:
    """The official network of a checkpoint from its variables (name -> shape):
    units per block from the highest ``unit_U`` of each block, the halting type
    from the halting branches' variables, the widths and classes from shapes."""
    model_names = [n for n in shapes if not is_training_only(n)]
    units = {}
    for name in model_names:
        match = _UNIT.match(name)
        if match:
            block, unit = int(match.group(1)), int(match.group(2))
            units[block] = max(units.get(block, 0), unit)
    absent = [f"{SCOPE}/block{b}" for b in range(1, NUM_BLOCKS + 1) if b not in units]
    if absent:
        examples = ", ".join(sorted(model_names)[:3]) or "none"
        raise InputValueError(f"not a checkpoint of the official SACT ImageNet ResNet: no variables under "
                              f"{', '.join(absent)} (variables such as {examples})")
    if any("/halting_proba/local_conv/" in n for n in model_names):
        halting = "sact"
    elif any("/halting_proba/" in n for n in model_names):
        halting = "act"
    else:
        halting = "none"
    bottleneck = None
    for name in sorted(model_names):  # any conv1/conv2 variable of any block: its last dimension is the width
        match = _BOTTLENECK_CONV.match(name)
        if match and shapes[name]:
            bottleneck = int(shapes[name][-1]) // 2 ** (int(match.group(1)) - 1)
            break
    if bottleneck is None:
        raise InputValueError(f"the checkpoint has no variable under {SCOPE}/blockB/unit_U/bottleneck_v2/conv1 "
                              "or conv2 (the bottleneck width)")
    return OfficialModel(halting=halting, units=tuple(units[b] for b in range(1, NUM_BLOCKS + 1)),
                         bottleneck=bottleneck, stem=_last_dim(shapes, f"{SCOPE}/conv1", "the stem's channels"),
                         num_classes=_last_dim(shapes, f"{SCOPE}/logits", "the number of classes"))


def to_pytorch_layout(value: np.ndarray, layout: str) -> np.ndarray:
    """A TF value in PyTorch's layout (see :class:`Variable`)."""
    if layout == "conv":
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if layout == "linear":
        return np.ascontiguousarray(value[0, 0].T)
    return np.ascontiguousarray(value)


def listed(names: List[str], limit: int = 20) -> str:
    """``names`` for a message: all of them up to ``limit``, then how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
