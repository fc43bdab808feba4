"""Per-image FLOPs of the feature extractor, in the paper's convention (sec. 4.1).

* A multiply-add is 2 FLOPs; only convolutions (and the halting branch's
  linear layer, a 1x1 convolution on the pooled features) are counted. Biases,
  batch norms, ReLUs, pooling and the halting arithmetic are not: the official
  ``flopsometer`` counts ``2 x positions x C_out x k_h x k_w x C_in`` the same way.
* The detector's feature extractor is the stem and blocks 1-3 (res2, res3,
  res4); the classifier adds res5 and its linear layer (:func:`linear_flops`,
  which is the official code's 1x1 "logits" convolution on the pooled features).
* Both unit types count alike: Detectron2's post-activation units and the
  pre-activation ones of :mod:`sact_det.modeling.preact` have the same three
  convolutions (the stride in the 1x1 or the 3x3 one, read from the modules)
  and a projection shortcut in the first unit of a block. A dense
  pre-activation ResNet-101 at 224x224 with 1001 classes counts
  15,602,814,976 FLOPs, the constant of the official ``imagenet_model_test.py``.
* A unit that SACT evaluates at a set of active positions costs its first 1x1
  convolution on the 3x3-dilated active set (the 3x3 convolution reads those
  neighbours) and its 3x3 and last 1x1 convolutions on the active set only:
  the perforated convolution of section 2.3. ACT evaluates whole images.
* The first unit of a block is dense (it changes resolution) and every
  evaluated non-final unit adds its halting branch (eqs. 6, 14), whose 3x3
  term is counted as nine per-tap products on the dilated active set, as the
  sparse executors compute it.

Counts are computed from the modules' own convolution hyper-parameters, so
they follow whatever widths, strides and unit counts a config builds.
"""
from typing import Iterable, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "conv_flops", "conv_output_size", "dense_unit_flops", "dense_units_flops", "stem_flops",
    "perforated_unit_flops", "halting_flops", "dilate", "stage_flops", "dense_flops", "rpn_flops",
    "linear_flops", "box_head_flops",
]

Size = Tuple[int, int]


def conv_flops(conv: nn.Conv2d, num_positions) -> int:
    """FLOPs of ``conv`` evaluated at ``num_positions`` output positions."""
    kh, kw = conv.kernel_size
    return 2 * (conv.in_channels // conv.groups) * kh * kw * conv.out_channels * num_positions


def conv_output_size(conv: nn.Conv2d, size: Size) -> Size:
    """Output spatial size of ``conv`` for an input of ``size`` (PyTorch's formula)."""
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(size, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    )


def dense_unit_flops(unit: nn.Module, size: Size) -> Tuple[int, Size]:
    """FLOPs of a bottleneck unit evaluated everywhere on an input of ``size``;
    returns (FLOPs, output size)."""
    flops = 0
    hw = size
    for conv in (unit.conv1, unit.conv2, unit.conv3):
        hw = conv_output_size(conv, hw)
        flops += conv_flops(conv, hw[0] * hw[1])
    if unit.shortcut is not None:
        short_hw = conv_output_size(unit.shortcut, size)
        flops += conv_flops(unit.shortcut, short_hw[0] * short_hw[1])
    return flops, hw


def dense_units_flops(units: Sequence[nn.Module], size: Size) -> Tuple[int, Size]:
    """FLOPs of consecutive units evaluated everywhere; returns (FLOPs, output size)."""
    flops = 0
    for unit in units:
        unit_cost, size = dense_unit_flops(unit, size)
        flops += unit_cost
    return flops, size


def stem_flops(stem: nn.Module, size: Size) -> Tuple[int, Size]:
    """FLOPs of the ResNet stem (7x7 stride-2 conv; the 3x3 stride-2 max-pool is
    not a convolution); returns (FLOPs, output size after the pool: ``ceil(n / 2)``
    for Detectron2's padding-1 pool and TensorFlow's "SAME" one alike)."""
    hw = conv_output_size(stem.conv1, size)
    pooled = tuple((n + 2 - 3) // 2 + 1 for n in hw)  # max_pool2d(3, stride 2, padding 1)
    return conv_flops(stem.conv1, hw[0] * hw[1]), pooled


def perforated_unit_flops(unit: nn.Module, num_active, num_dilated):
    """FLOPs of a stride-1 identity-shortcut unit evaluated at ``num_active``
    positions whose 3x3 neighbourhoods cover ``num_dilated`` positions (sec. 2.3)."""
    if unit.shortcut is not None or unit.stride != 1:
        raise ValueError("only the units after the first of a block are evaluated sparsely")
    return (conv_flops(unit.conv1, num_dilated) + conv_flops(unit.conv2, num_active)
            + conv_flops(unit.conv3, num_active))


def halting_flops(branch: nn.Module, num_dilated, num_images=1):
    """FLOPs of a halting branch: the linear term on pooled features (once per
    image) plus, for SACT, the 3x3 one-channel convolution, computed as its nine
    per-tap products at the ``num_dilated`` positions that the active positions
    read (cheaper than gathering 3x3 x C patches per active position)."""
    flops = 2 * branch.global_logit.in_features * num_images
    if branch.spatial_logit is not None:
        flops = flops + conv_flops(branch.spatial_logit, num_dilated)
    return flops


def dilate(mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """3x3 dilation of a bool ``[B, 1, H, W]`` mask, within the images (``valid``)."""
    return (F.max_pool2d(mask.float(), 3, stride=1, padding=1) > 0) & valid


def stage_flops(stage: nn.Module, output, input_sizes: Sequence[Size]) -> torch.Tensor:
    """Per-image FLOPs of one block, ``int64 [B]``, counted inside each image only.

    Args:
        stage: an :class:`~sact_det.modeling.sact.adaptive_stage.AdaptiveStage`.
        output: its :class:`~sact_det.modeling.sact.adaptive_stage.StageOutput` (inference).
        input_sizes: each image's own (unpadded) input size for the block.
    """
    units = stage.units
    dense_part = units if not stage.adaptive else units[:1]  # the first unit is always dense
    flops = torch.tensor([dense_units_flops(dense_part, size)[0] for size in input_sizes],
                         dtype=torch.int64, device=output.valid.device)
    if not stage.adaptive:
        return flops
    spatial = stage.halting_type == "sact"
    if stage.num_units > 1:  # halting after the first unit, at every image position
        flops += halting_flops(stage.halting[0], output.valid.sum(dim=(1, 2, 3)))
    for index, mask in enumerate(output.computed_masks, start=1):
        num_active = mask.sum(dim=(1, 2, 3))
        num_dilated = dilate(mask, output.valid).sum(dim=(1, 2, 3)) if spatial else num_active
        flops += perforated_unit_flops(units[index], num_active, num_dilated)
        if index < stage.num_units - 1:
            image_active = (num_active > 0).long()  # the pooled term runs once per active image
            flops += halting_flops(stage.halting[index], num_dilated) * image_active
    return flops


def dense_flops(stem: nn.Module, blocks: Iterable[Sequence[nn.Module]], size: Size) -> int:
    """FLOPs of a dense (non-adaptive) feature extractor on an image of ``size``."""
    flops, hw = stem_flops(stem, size)
    for units in blocks:
        block_cost, hw = dense_units_flops(units, hw)
        flops += block_cost
    return flops


def rpn_flops(rpn_head: nn.Module, feature_size: Size) -> int:
    """FLOPs of an RPN head on a feature map of ``feature_size``: its 3x3
    convolution and the objectness and box-delta 1x1 convolutions, all at
    every position (stride 1, same size)."""
    positions = feature_size[0] * feature_size[1]
    return sum(conv_flops(m, positions) for m in rpn_head.modules() if isinstance(m, nn.Conv2d))


def linear_flops(layer: nn.Linear) -> int:
    """FLOPs of a linear layer on one input vector (multiply-add = 2, bias
    ignored): the classifier's logits and the box predictor, per image or proposal."""
    return 2 * layer.in_features * layer.out_features


def box_head_flops(res5: nn.Module, box_predictor: nn.Module, units: torch.Tensor, pooled_size: Size,
                   halting: bool = True) -> int:
    """FLOPs of the res5 box head on the proposals of one image, as evaluated.

    Args:
        res5: the head's :class:`~sact_det.modeling.sact.adaptive_stage.AdaptiveStage`.
        box_predictor: Detectron2's ``FastRCNNOutputLayers`` (its linear layers count).
        units: int ``[R]``, the units each proposal ran (all of them without ACT).
        pooled_size: ROIAlign output size (the first unit's input).
        halting: count the ACT halting branches evaluated (each evaluated unit but
            the block's last adds one, eq. 6); False for the dense reference.
    """
    blocks = res5.units
    per_unit, size = [], tuple(pooled_size)
    for unit in blocks:  # each unit densely on the proposal's map
        cost, size = dense_unit_flops(unit, size)
        per_unit.append(cost)
    branch = (2 * res5.halting[0].global_logit.in_features) if halting and res5.adaptive else 0
    # cost of running n units (n = 1..L): units 1..n, plus a branch after each but the L-th
    cumulative = [sum(per_unit[:n]) + branch * min(n, len(blocks) - 1) for n in range(1, len(blocks) + 1)]
    counts = torch.bincount(units.long().cpu(), minlength=len(blocks) + 1)[1:]
    predictor = sum(linear_flops(m) for m in box_predictor.modules() if isinstance(m, nn.Linear))
    return int(sum(int(c) * cost for c, cost in zip(counts, cumulative)) + predictor * units.numel())
