"""Pre-activation residual units (He et al. 2016, "Identity mappings in deep
residual networks"): the units of the paper's ImageNet networks (section 2.1),
``MODEL.SACT.UNIT_TYPE pre_activation``.

* :class:`PreActBottleneck`: ``x + conv3(relu(BN(conv2(relu(BN(conv1(relu(BN(x)))))))))``.
  The batch norm and ReLU come *before* each convolution (``preact`` on the unit
  input); ``conv3`` has a bias and no norm; nothing follows the addition. The
  projection shortcut (1x1, with bias, no norm) reads the pre-activated input
  and exists only where the channels change (the first unit of each block);
  the stride of a block's first unit is in its 3x3 convolution.
* :class:`PreActStem`: a 7x7 stride-2 convolution with bias (no norm, no ReLU),
  then a 3x3 stride-2 max pool with TensorFlow's "SAME" padding: asymmetric,
  ``-inf``-filled, so that an odd and an even input align as in the official code.
* :func:`build_postnorm`: the final BN (+ ReLU, applied by its user) after res5.

Parameter names follow the naming contract of the TensorFlow converter
(``preact.*``, ``conv1.weight``, ``conv1.norm.*``, ..., ``conv3.bias``,
``shortcut.{weight,bias}``, ``stem.conv1.{weight,bias}``, ``postnorm.*``).

Batched images of different sizes (zero-padded at the bottom and right) give
each image what it gets alone: :meth:`PreActBottleneck.forward_masked` and
:meth:`PreActStem.forward_masked` take the valid mask, as
:func:`~sact_det.modeling.sact.adaptive_stage.run_unit` and
:func:`~sact_det.modeling.backbone.stem_forward` do for Detectron2's units.
"""
import math
from typing import List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import CNNBlockBase, Conv2d, get_norm

from sact_det.modeling.sact.adaptive_stage import subsample_valid

__all__ = ["PreActBottleneck", "PreActStem", "same_max_pool", "make_preact_stage", "build_postnorm"]


def _as_mask(valid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return valid.to(x.dtype)


class PreActBottleneck(CNNBlockBase):
    """A pre-activation bottleneck unit (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int = 1,
                 norm: str = "BN"):
        super().__init__(in_channels, out_channels, stride)
        self.preact = get_norm(norm, in_channels)
        self.shortcut = (Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=True)
                         if in_channels != out_channels else None)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride, padding=1,
                            bias=False, norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=True)
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                weight_init.c2_msra_fill(conv)  # He initialisation, zero biases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_masked(x, None)

    def forward_masked(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """The unit on ``x`` ``[B, C_in, H, W]`` whose padded positions (outside
        ``valid``, bool ``[B, 1, H, W]``; None: none) are zero. Only what a 3x3
        convolution or the next unit reads is zeroed there: the first
        convolution's output and the unit's output (the 1x1 convolutions read
        the padded positions only for padded outputs)."""
        preact = F.relu(self.preact(x))
        out = F.relu(self.conv1(preact))  # stride 1: at the input resolution
        if valid is not None:
            out = out * _as_mask(valid, out)
        out = self.conv3(F.relu(self.conv2(out)))
        if self.shortcut is not None:
            shortcut = self.shortcut(preact)
        else:  # TF-Slim's subsample: a 1x1 max pool of the stride, i.e. every stride-th position
            shortcut = x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]
        out = out + shortcut
        if valid is not None:
            out = out * _as_mask(subsample_valid(valid, self.stride), out)
        return out


def same_max_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-2 max pool with TensorFlow's "SAME" padding: output ``ceil(n / 2)``,
    ``pad_total = max((ceil(n / 2) - 1) * 2 + 3 - n, 0)`` split as ``total // 2``
    before and the rest after, padded cells never winning (``-inf``): an even
    size pads 0 before and 1 after, an odd one 1 and 1."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dimension first
        total = max((math.ceil(n / 2) - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=-math.inf), kernel_size=3, stride=2)


class PreActStem(CNNBlockBase):
    """The pre-activation ResNet's stem: 7x7/2 convolution with bias, then
    :func:`same_max_pool` (no norm, no ReLU: the first unit's ``preact`` follows)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=True)
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_max_pool(self.conv1(x))

    def forward_masked(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """The stem on a zero-padded batch; ``valid`` bool ``[B, 1, H, W]`` at the
        input resolution (None: no padding). "SAME" pooling pads each image by
        its own size's parity, so padded batches are pooled image by image, each
        on its own convolution output; the padding of the result is zero."""
        x = self.conv1(x)
        if valid is None:
            return same_max_pool(x)
        conv_valid = subsample_valid(valid, 2)
        out = x.new_zeros(x.shape[:2] + tuple(-(-n // 2) for n in x.shape[-2:]))
        for index in range(x.shape[0]):
            height, width = int(conv_valid[index, 0, :, 0].sum()), int(conv_valid[index, 0, 0, :].sum())
            pooled = same_max_pool(x[index:index + 1, :, :height, :width])
            out[index:index + 1, :, :pooled.shape[-2], :pooled.shape[-1]] = pooled
        return out


def make_preact_stage(num_units: int, *, in_channels: int, bottleneck_channels: int, out_channels: int,
                      first_stride: int, norm: str) -> List[PreActBottleneck]:
    """The units of one block; the first has the block's stride (in its 3x3
    convolution) and the projection shortcut."""
    units = []
    for index in range(num_units):
        units.append(PreActBottleneck(in_channels, out_channels, bottleneck_channels=bottleneck_channels,
                                      stride=first_stride if index == 0 else 1, norm=norm))
        in_channels = out_channels
    return units


def build_postnorm(norm: str, channels: int) -> nn.Module:
    """The batch norm after the last block of a pre-activation ResNet (its user
    applies the ReLU that follows it)."""
    return get_norm(norm, channels)
