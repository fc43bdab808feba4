"""Inference weights for sparse execution: batch norm folded into the
convolutions, channels-last layouts and row-matrix forms of the 1x1 and 3x3
convolutions, for Detectron2's ``BottleneckBlock`` and for halting branches."""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d

from sact_det.modeling.sact.adaptive_stage import subsample_valid
from sact_det.modeling.sparse.kernels import conv_add_relu, conv_add_relu_, conv_relu

__all__ = ["fold_conv_norm", "FoldedConv", "FoldedUnit", "FoldedHalting", "rows_of", "WeightWatch"]


class WeightWatch:
    """Tells whether a module's parameters and buffers changed since folding:
    replaced (``load_state_dict(assign=True)``, ``module.weight = ...``), moved
    (``.to()`` gives new storage) or written in place (``copy_`` bumps the
    version). The module tree is walked once; each check only reads the
    attributes (0.16 ms per image for ResNet-101's feature extractor instead of
    0.7 ms)."""

    def __init__(self, module: nn.Module):
        self._slots = [(table, name) for owner in module.modules()
                       for table in (owner._parameters, owner._buffers) for name in table]
        self._state = self._read()

    def _read(self):
        return [(t.data_ptr(), t._version) if t is not None else None
                for t in (table.get(name) for table, name in self._slots)]

    def changed(self) -> bool:
        return self._read() != self._state


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
        # Checked once here: the fused kernels' ReLU turns NaN into 0, so the
        # outputs alone do not show broken weights (sact_det.modeling.sact.adaptive_stage.check_finite).
        self.finite = bool(torch.isfinite(weight).all() and torch.isfinite(self.bias).all())
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride, conv.padding, conv.dilation, conv.groups)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(conv(x))``, fused (:mod:`.kernels`)."""
        return conv_relu(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def add_relu(self, x: torch.Tensor, residual: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``relu(conv(x) + residual)``, fused; ``inplace``: written into ``residual``."""
        fn = conv_add_relu_ if inplace else conv_add_relu
        return fn(x, self.weight, self.bias, residual, self.stride, self.padding, self.dilation, self.groups)


class FoldedUnit:
    """A Detectron2 ``BottleneckBlock`` with folded batch norm: a dense
    channels-last form and, for stride-1 identity units, row-matrix weights
    (``[out, in]``, as matrix products of gathered rows take them)."""

    def __init__(self, unit: nn.Module):
        self.conv1, self.conv2, self.conv3 = (FoldedConv(c) for c in (unit.conv1, unit.conv2, unit.conv3))
        self.shortcut = FoldedConv(unit.shortcut) if unit.shortcut is not None else None
        self.finite = all(c.finite for c in (self.conv1, self.conv2, self.conv3, self.shortcut) if c is not None)
        self.stride = unit.stride
        self.bottleneck = self.conv2.weight.shape[0]
        self.out_channels = self.conv3.weight.shape[0]
        self.sparse = (self.shortcut is None and unit.stride == 1 and self.conv2.groups == 1
                       and self.conv2.dilation == (1, 1))
        self.w3 = self.conv3.weight[:, :, 0, 0].contiguous()  # [C, Cb]
        if self.sparse:
            self.w1 = self.conv1.weight[:, :, 0, 0].contiguous()  # [Cb, C]
            # im2col layout: output channel <- (tap row-major, input channel).
            self.w2 = self.conv2.weight.permute(0, 2, 3, 1).reshape(self.bottleneck, -1).contiguous()

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        return tuple(-(-n // self.stride) for n in size)

    def dense(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None, inplace: bool = False) -> torch.Tensor:
        """The unit on a channels-last ``[B, C, H, W]`` map, as a new channels-last
        map: each convolution with its bias, ReLU and (the last) residual fused.
        ``inplace``: an identity unit writes its output over ``x`` (when the
        caller no longer needs it). ``valid`` (at ``x``'s resolution): padded
        positions are zeroed after the first convolution and in the output, as
        :func:`sact_det.modeling.sact.adaptive_stage.run_unit` does."""
        z = self.conv1.relu(x)
        if valid is not None:
            out_valid = subsample_valid(valid, self.stride)
            z.mul_(out_valid if self.conv1.stride[0] == self.stride else valid)
        if self.shortcut is not None:  # a new map: written in place
            out = self.conv3.add_relu(self.conv2.relu(z), self.shortcut(x), inplace=True)
        else:
            out = self.conv3.add_relu(self.conv2.relu(z), x, inplace=inplace)
        return out.mul_(subsample_valid(valid, self.stride)) if valid is not None else out


class FoldedHalting:
    """A halting branch (eqs. 6, 14) for sparse execution: the pooled term's
    weights and bias, and the 3x3 term as nine per-tap weight vectors ``[9, C]``
    (None for ACT), applied to rows as ``F.linear(rows, taps)``. ``products``
    ``[10, C]`` (``[1, C]`` for ACT) adds the pooled term's weights as a tenth
    column: over a whole map, ``W pool(x) = mean(x W)`` comes from the same
    pass as the per-tap products."""

    def __init__(self, branch: nn.Module):
        self.branch = branch  # its test-time offset is read at every call
        self.taps = None
        global_weight = branch.global_logit.weight.detach()
        if branch.spatial_logit is not None:  # [9, C]: F.linear's layout, much faster than [C, 9] here
            self.taps = branch.spatial_logit.weight.detach()[0].flatten(1).t().contiguous()
        products = torch.cat([self.taps, global_weight]) if self.taps is not None else global_weight
        # as a 1x1 convolution's weights [10, C, 1, 1] (ACT: [1, C, 1, 1]), channels-last
        self.products = products[:, :, None, None].contiguous(memory_format=torch.channels_last)
        self.global_weight = global_weight[0].float()
        self.bias = branch.bias.detach()[0].float()

    @property
    def offset_bias(self) -> torch.Tensor:
        """``b`` plus the test-time offset."""
        return self.bias + self.branch.test_offset

    def global_logit(self, pooled: torch.Tensor) -> torch.Tensor:
        """``W pool(x) + b`` per image from pooled features ``[B, C]``, ``[B]`` float32."""
        return pooled @ self.global_weight + self.offset_bias
