"""Box classifier: ResNet block 4 (res5) on the region proposals' features, sec. 4.2.

As in [16] and the paper, blocks 1-3 are the feature extractor and block 4
classifies each proposal: ROIAlign features of a proposal go through the
non-adaptive res5 units, are averaged over space and fed to the box predictor.
Its parameters are named ``roi_heads.res5.{i}.*`` so that ``res5.*`` weights of
the same ImageNet checkpoint load into it.
"""
from torch import nn

from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads

__all__ = ["Block4ROIHeads"]


@ROI_HEADS_REGISTRY.register()
class Block4ROIHeads(Res5ROIHeads):
    """Detectron2's res5 ROI head with a configurable number of res5 units
    (``MODEL.SACT.RES5_NUM_UNITS``; 3 in every standard ResNet), so that small
    CPU models can shorten the head, which dominates C4 training cost."""

    @classmethod
    def _build_res5_block(cls, cfg):
        r = cfg.MODEL.RESNETS
        if r.DEFORM_ON_PER_STAGE[-1]:
            raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable res5 is not supported")
        num_units = cfg.MODEL.SACT.RES5_NUM_UNITS
        out_channels = r.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
        units = ResNet.make_stage(
            BottleneckBlock, num_units, stride_per_block=[2] + [1] * (num_units - 1),
            in_channels=out_channels // 2, bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8,
            out_channels=out_channels, num_groups=r.NUM_GROUPS, norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
        )
        return nn.Sequential(*units), out_channels
