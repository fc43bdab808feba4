"""Inference weights for sparse execution: batch norm folded into the
convolutions, channels-last layouts and row-matrix forms of the 1x1 and 3x3
convolutions, for Detectron2's ``BottleneckBlock`` and for halting branches
(whose optional batch norms, ``MODEL.SACT.HALTING_NORM``, fold into their weights).

Pre-activation units (``MODEL.SACT.UNIT_TYPE pre_activation``) and
replicate-padded halting branches are not supported: the executors refuse them
with a message naming the key (``MODEL.SACT.EXECUTION dense`` runs them)."""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BottleneckBlock

from sact_det.modeling.sact.adaptive_stage import subsample_valid
from sact_det.modeling.sparse.kernels import conv_add_relu, conv_add_relu_, conv_relu, linear

__all__ = ["norm_scale_shift", "fold_conv_norm", "FoldedConv", "FoldedUnit", "FoldedHalting", "rows_of",
           "WeightWatch", "DENSE_ONLY"]

# What to use for what the sparse executors do not run.
DENSE_ONLY = "use MODEL.SACT.EXECUTION dense"


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


def norm_scale_shift(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) ``[C]`` of a frozen or eval-mode batch norm: ``norm(x) = x * scale + shift``."""
    if not isinstance(norm, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)):
        raise ValueError(f"sparse execution folds batch norm into the convolutions; {type(norm).__name__} "
                         "cannot be folded (MODEL.RESNETS.NORM must be FrozenBN, BN or SyncBN)")
    scale = (norm.weight * torch.rsqrt(norm.running_var + norm.eps)).detach()
    return scale, (norm.bias - norm.running_mean * scale).detach()


def fold_conv_norm(conv: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` followed by its frozen or eval-mode batch norm."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    norm = getattr(conv, "norm", None)
    if norm is None:
        return weight, bias
    scale, shift = norm_scale_shift(norm)
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
        if not isinstance(unit, BottleneckBlock):
            raise ValueError(f"sparse execution (MODEL.SACT.EXECUTION) runs Detectron2's post-activation "
                             f"BottleneckBlock units, not {type(unit).__name__} (MODEL.SACT.UNIT_TYPE "
                             f"pre_activation); {DENSE_ONLY}")
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
    (None for ACT) and biases ``[9]``, applied to rows as ``F.linear(rows, taps) +
    tap_bias``. ``products`` ``[10, C]`` (``[1, C]`` for ACT) adds the pooled
    term's weights as a tenth row: over a whole map, ``W pool(x) = mean(x W)``
    comes from the same pass as the per-tap products.

    The authors' batch norms (``MODEL.SACT.HALTING_NORM``) are affine at
    inference and fold in: ``W~ * BN_l(x)`` has taps ``W~_t * scale_l`` and, at a
    position whose tap t falls inside the image, ``W~_t . shift_l`` added; a tap
    outside reads the zero padding of ``BN_l(x)``, i.e. nothing (a zero
    product), so each tap's constant travels with its product. ``W BN_g(pool(x))
    = (W * scale_g) pool(x) + W . shift_g``: the constant joins ``b``."""

    def __init__(self, branch: nn.Module):
        if branch.spatial_logit is not None and getattr(branch, "padding", "zeros") != "zeros":
            raise ValueError(f"sparse execution (MODEL.SACT.EXECUTION) runs zero-padded halting branches only, "
                             f"not MODEL.SACT.HALTING_PADDING {branch.padding}; {DENSE_ONLY}")
        self.branch = branch  # its test-time offset is read at every call
        self.taps, self.tap_bias = None, None
        global_weight = branch.global_logit.weight.detach()  # [1, C]
        bias = branch.bias.detach()[0].float()
        if getattr(branch, "global_norm", None) is not None:
            scale, shift = norm_scale_shift(branch.global_norm)
            bias = bias + (global_weight[0] * shift).sum().float()
            global_weight = global_weight * scale
        if branch.spatial_logit is not None:  # [9, C]: F.linear's layout, much faster than [C, 9] here
            taps = branch.spatial_logit.weight.detach()[0].flatten(1).t()
            if getattr(branch, "local_norm", None) is not None:
                scale, shift = norm_scale_shift(branch.local_norm)
                self.tap_bias = (taps * shift).sum(1).contiguous()  # [9]
                taps = taps * scale
            self.taps = taps.contiguous()
        products = torch.cat([self.taps, global_weight]) if self.taps is not None else global_weight
        # as a 1x1 convolution's weights [10, C, 1, 1] (ACT: [1, C, 1, 1]), channels-last
        self.products = products[:, :, None, None].contiguous(memory_format=torch.channels_last)
        self.products_bias = (torch.cat([self.tap_bias, self.tap_bias.new_zeros(1)])
                              if self.tap_bias is not None else None)
        self.global_weight = global_weight[0].float()
        self.bias = bias

    @property
    def offset_bias(self) -> torch.Tensor:
        """``b`` plus the test-time offset."""
        return self.bias + self.branch.test_offset

    def global_logit(self, pooled: torch.Tensor) -> torch.Tensor:
        """``W pool(x) + b`` per image from pooled features ``[B, C]``, ``[B]`` float32."""
        return pooled @ self.global_weight + self.offset_bias

    def tap_products(self, rows: torch.Tensor) -> torch.Tensor:
        """The 3x3 term's per-tap products of rows ``[N, C]`` (each position's
        contribution through each tap), ``[N, 9]``."""
        products = linear(rows, self.taps.to(rows.dtype))
        return products if self.tap_bias is None else products + self.tap_bias.to(rows.dtype)
