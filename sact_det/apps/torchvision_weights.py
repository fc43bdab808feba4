"""torchvision ImageNet ResNets as Detectron2 checkpoints (``tools/convert_torchvision_to_d2.py``).

torchvision names a bottleneck ResNet ``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.bn1``, ``layer1.0.downsample.{0,1}``, ``fc``; Detectron2 (and so the
SACT feature extractor and its res5 box head) names it ``stem.conv1``,
``stem.conv1.norm``, ``res2.0.conv1``, ``res2.0.conv1.norm``,
``res2.0.shortcut{,.norm}``. The converted file is a pickle that Detectron2's
checkpointer loads with its name-matching heuristics (``"matching_heuristics"``),
which put ``res2``-``res4`` under ``backbone.`` and ``res5`` under
``roi_heads.res5``. The classifier ``fc`` is dropped.

torchvision models take RGB images normalised by ImageNet's mean and std in
[0, 1], and stride their bottlenecks in the 3x3 convolution; the config must
say so: :data:`TORCHVISION_CONFIG`.
"""
import pickle
import re
from typing import Dict, Tuple

import torch

from sact_det.utils.errors import InputError
from sact_det.utils.files import atomic_path
from sact_det.utils.safe_load import load_torch_weights

__all__ = ["TORCHVISION_CONFIG", "torchvision_to_detectron2", "convert_torchvision_checkpoint"]

# Config overrides for converted torchvision weights: RGB input, torchvision's
# normalisation (mean/std of [0, 1] images, times 255) and stride in the 3x3 conv.
TORCHVISION_CONFIG = (
    "INPUT.FORMAT", "RGB",
    "MODEL.PIXEL_MEAN", "[123.675, 116.280, 103.530]",
    "MODEL.PIXEL_STD", "[58.395, 57.120, 57.375]",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
)

# Units per block (layer1-layer4) -> depth, for the bottleneck ResNets sact-det builds.
_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}

_NORM = re.compile(r"bn(\d)\.")
_LAYER = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")


def _unit_param(rest: str) -> str:
    """A unit's own parameter name, torchvision -> Detectron2."""
    rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    return _NORM.sub(lambda m: f"conv{m.group(1)}.norm.", rest)


def _rename(key: str):
    """Detectron2 name of a torchvision ResNet key; None for keys dropped on purpose."""
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None  # the ImageNet classifier; a counter batch norm does not need
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[len("bn1."):]
    match = _LAYER.match(key)
    if not match:
        raise ValueError(f"{key!r} is not a parameter of a torchvision ResNet")
    layer, unit, rest = match.groups()
    return f"res{int(layer) + 1}.{unit}.{_unit_param(rest)}"


def torchvision_to_detectron2(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], int]:
    """Renamed ``state`` (torchvision's ``resnet*().state_dict()``) and the
    ResNet depth its units give (0 when not a ResNet-50/101/152)."""
    if "conv1.weight" not in state or not any(k.startswith("layer1.") for k in state):
        raise ValueError("expected a torchvision ResNet state dict (keys conv1.weight, layer1.0.conv1.weight, "
                         f"...); found keys such as {sorted(state)[:4]}")
    renamed = {}
    for key, value in state.items():
        name = _rename(key)
        if name is not None:
            renamed[name] = value
    units = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    return renamed, _DEPTHS.get(units, 0)


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A torchvision checkpoint: a state dict, or one wrapped in ``state_dict``/``model``."""
    try:
        payload = load_torch_weights(path)  # weights only: a file that asks to run code is refused
    except InputError:  # refused, or unreadable: the message names the file
        raise
    except Exception as e:  # pickle, zip and torch errors alike: say what the file is not
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"cannot read {path!r} as a PyTorch checkpoint: {type(e).__name__}: {first_line}") from None
    for key in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{path!r} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in payload.items()}


def convert_torchvision_checkpoint(source: str, destination: str) -> Tuple[int, int]:
    """Writes ``destination`` (a Detectron2 ``.pkl``) from a torchvision ResNet
    checkpoint; returns (number of tensors written, ResNet depth or 0)."""
    renamed, depth = torchvision_to_detectron2(_read_state_dict(source))
    payload = {"model": {k: v.detach().cpu().numpy() for k, v in renamed.items()},
               "__author__": "torchvision", "matching_heuristics": True}
    with atomic_path(destination) as temporary, open(temporary, "wb") as f:
        pickle.dump(payload, f)
    return len(renamed), depth
