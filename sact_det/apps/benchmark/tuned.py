"""The best dense version of a Detectron2 ResNet-C4, for fair comparisons.

Every plain optimisation the sparse executors use, applied to the dense
network and nothing else: batch norm folded into the convolutions,
channels-last maps, oneDNN-fused convolution + bias + ReLU (+ residual)
kernels (:mod:`sact_det.modeling.sparse.kernels`), each identity unit's output written over its input.
The benchmark times SACT against this network ("tuned") as well as against
Detectron2's own modules ("stock").
"""
from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone

from sact_det.modeling.sparse.folding import FoldedConv, FoldedUnit

__all__ = ["TunedBackbone", "TunedRes5", "tune_detector"]


def _units(block: nn.Module):
    return list(block.units) if hasattr(block, "units") else list(block)


class TunedBackbone(Backbone):
    """A Detectron2 ``ResNet`` backbone (or SACT's, run densely) with folded,
    channels-last, fused units. The weights are copied at construction."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.stem = FoldedConv(backbone.stem.conv1)
        self.names = [n for n in ("res2", "res3", "res4", "res5") if hasattr(backbone, n)]
        self.blocks = [[FoldedUnit(u) for u in _units(getattr(backbone, n))] for n in self.names]
        self._out_features = list(backbone._out_features)
        self._shapes = backbone.output_shape()

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return self._shapes

    def run_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem (convolution, ReLU, max pooling) on an image batch, channels-last."""
        return F.max_pool2d(self.stem.relu(x.contiguous(memory_format=torch.channels_last)), 3, 2, 1)

    @staticmethod
    def run_units(units, x: torch.Tensor) -> torch.Tensor:
        """``units`` in turn; identity units write over their input."""
        for unit in units:
            x = unit.dense(x, inplace=True)
        return x

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.run_stem(x)
        outputs = {}
        for name, units in zip(self.names, self.blocks):
            x = self.run_units(units, x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


class TunedRes5(nn.Module):
    """The res5 box head's units, folded, channels-last and fused."""

    def __init__(self, res5: nn.Module):
        super().__init__()
        self.units = [FoldedUnit(u) for u in _units(res5)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for index, unit in enumerate(self.units):
            x = unit.dense(x, inplace=index > 0)  # not over the caller's pooled features
        return x


def tune_detector(model: nn.Module) -> nn.Module:
    """Detectron2's ``GeneralizedRCNN`` with a ``Res5ROIHeads`` (a C4 Faster
    R-CNN), its backbone and res5 head replaced by their tuned versions, in place."""
    model.backbone = TunedBackbone(model.backbone)
    model.roi_heads.res5 = TunedRes5(model.roi_heads.res5)
    return model
