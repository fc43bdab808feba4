"""Inference weights for sparse execution: batch norm folded into the
convolutions, channels-last layouts and row-matrix forms of the 1x1 and 3x3
convolutions, for Detectron2's ``BottleneckBlock`` and for halting branches."""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d

from ..adaptive_stage import subsample_valid

__all__ = ["fold_conv_norm", "FoldedConv", "FoldedUnit", "FoldedHalting", "rows_of"]


def fold_conv_norm(conv: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` followed by its frozen or eval-mode batch norm."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    norm = getattr(conv, "norm", None)
    if norm is None:
        return weight, bias
    if not isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
        raise ValueError(f"sparse execution folds batch norm into the convolutions; {type(norm).__name__} "
                         "cannot be folded (MODEL.RESNETS.NORM must be FrozenBN, BN or SyncBN)")
    scale = (norm.weight * torch.rsqrt(norm.running_var + norm.eps)).detach()
    shift = (norm.bias - norm.running_mean * scale).detach()
    return weight * scale.view(-1, 1, 1, 1), bias * scale + shift


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """``[B * H * W, C]`` rows of a ``[B, C, H, W]`` map (a view when channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class FoldedConv:
    """A convolution with its batch norm folded, channels-last weights."""

    def __init__(self, conv: nn.Conv2d):
        weight, self.bias = fold_conv_norm(conv)
        self.weight = weight.contiguous(memory_format=torch.channels_last)
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride, conv.padding, conv.dilation, conv.groups)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FoldedUnit:
    """A Detectron2 ``BottleneckBlock`` with folded batch norm: a dense
    channels-last form and, for stride-1 identity units, row-matrix weights."""

    def __init__(self, unit: nn.Module):
        self.conv1, self.conv2, self.conv3 = (FoldedConv(c) for c in (unit.conv1, unit.conv2, unit.conv3))
        self.shortcut = FoldedConv(unit.shortcut) if unit.shortcut is not None else None
        self.stride = unit.stride
        self.bottleneck = self.conv2.weight.shape[0]
        self.sparse = (self.shortcut is None and unit.stride == 1 and self.conv2.groups == 1
                       and self.conv2.dilation == (1, 1))
        self.w3 = self.conv3.weight[:, :, 0, 0].t().contiguous()  # [Cb, C]
        if self.sparse:
            self.w1 = self.conv1.weight[:, :, 0, 0].t().contiguous()  # [C, Cb]
            # im2col layout: (tap row-major, input channel) -> output channel.
            self.w2 = self.conv2.weight.permute(2, 3, 1, 0).reshape(9 * self.bottleneck, -1).contiguous()

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        return tuple(-(-n // self.stride) for n in size)

    def dense_into(self, x: torch.Tensor, out: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """The unit on a channels-last map, written into the rows ``out``
        ``[B*H*W, C]``, which may be ``x``'s own rows (identity units update them
        in place). The last 1x1 convolution accumulates onto the residual rows,
        so no third full-size map is held. ``valid`` (at ``x``'s resolution):
        padded positions are zeroed after the first convolution and in the
        output, as :func:`sact_det.adaptive_stage.run_unit` does."""
        out_valid = subsample_valid(valid, self.stride)
        z = F.relu_(self.conv1(x))
        if valid is not None:
            z.mul_(out_valid if self.conv1.stride[0] == self.stride else valid)
        z = rows_of(F.relu_(self.conv2(z)))
        if self.shortcut is not None:
            out.copy_(rows_of(self.shortcut(x)))
        elif out.data_ptr() != x.data_ptr():
            out.copy_(rows_of(x))
        out.addmm_(z, self.w3).add_(self.conv3.bias).relu_()
        if out_valid is not None:
            out.mul_(rows_of(out_valid))

    def dense(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The unit on a channels-last ``[B, C, H, W]`` map; returns its rows."""
        height, width = self.output_size(x.shape[-2:])
        out = x.new_empty((x.shape[0] * height * width, self.w3.shape[1]))
        self.dense_into(x, out, valid)
        return out


class FoldedHalting:
    """A halting branch (eqs. 6, 14) for sparse execution: the pooled term's
    weights and bias, and the 3x3 term as nine per-tap weight vectors ``[9, C]``
    (None for ACT), applied to rows as ``F.linear(rows, taps)``."""

    def __init__(self, branch: nn.Module):
        self.branch = branch  # its test-time offset is read at every call
        self.taps = None
        if branch.spatial_logit is not None:  # [9, C]: F.linear's layout, much faster than [C, 9] here
            self.taps = branch.spatial_logit.weight.detach()[0].flatten(1).t().contiguous()
        self.global_weight = branch.global_logit.weight.detach()[0].float()
        self.bias = branch.bias.detach()[0].float()

    def global_logit(self, pooled: torch.Tensor) -> torch.Tensor:
        """``W pool(x) + b`` per image, ``[B]`` float32, with the test-time offset."""
        return pooled @ self.global_weight + (self.bias + self.branch.test_offset)
