"""SACT/ACT ResNet: the stem and blocks res2-res5 (the detector's feature
extractor is the stem and res2-res4, sec. 4.2; the classifier uses all four blocks).

Built from Detectron2's own ``BasicStem`` and ``BottleneckBlock`` with
Detectron2's parameter names (``stem.conv1``, ``res4.12.conv2``, ...), so that
ImageNet checkpoints (``detectron2://ImageNetPretrained/MSRA/R-101.pkl``, or
torchvision ResNets converted with Detectron2's script) load by name; only the
halting branches (``res{k}.halting.{l}.*``) are new. With
``MODEL.SACT.UNIT_TYPE pre_activation`` the units are the pre-activation ones of
:mod:`sact_det.modeling.preact` (the paper's ImageNet networks), followed by a
``postnorm`` (BN + ReLU) when res5 is the last block.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet

from sact_det.config.defaults import reference_units_per_block, units_per_block, validate_sact_config
from sact_det.modeling.flops import dense_flops
from sact_det.modeling.preact import PreActStem, build_postnorm, make_preact_stage
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage, StageOutput, check_finite, subsample_valid
from sact_det.modeling.sact.halting import set_test_halting_offset
from sact_det.modeling.sparse import SparseBackboneExecutor

__all__ = ["SACTResNet", "build_sact_resnet_backbone", "build_resnet_units", "make_units", "halting_options",
           "padding_mask", "stem_forward"]

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def make_units(cfg, num_units: int, *, in_channels: int, bottleneck_channels: int, out_channels: int,
               first_stride: int) -> List[nn.Module]:
    """The units of one block, of ``MODEL.SACT.UNIT_TYPE``, Detectron2's way
    (``MODEL.RESNETS`` norm, groups and stride placement) for post-activation
    units; the first unit has the block's stride."""
    r = cfg.MODEL.RESNETS
    if cfg.MODEL.SACT.UNIT_TYPE == "pre_activation":
        if r.NUM_GROUPS != 1:
            raise ValueError("MODEL.SACT.UNIT_TYPE pre_activation needs MODEL.RESNETS.NUM_GROUPS 1")
        return make_preact_stage(num_units, in_channels=in_channels, bottleneck_channels=bottleneck_channels,
                                 out_channels=out_channels, first_stride=first_stride, norm=r.NORM)
    return ResNet.make_stage(
        BottleneckBlock, num_units, stride_per_block=[first_stride] + [1] * (num_units - 1),
        in_channels=in_channels, bottleneck_channels=bottleneck_channels,
        out_channels=out_channels, num_groups=r.NUM_GROUPS, norm=r.NORM,
        stride_in_1x1=r.STRIDE_IN_1X1, dilation=1,
    )


def build_resnet_units(cfg, num_units: Sequence[int], image_channels: int = 3):
    """The stem and the residual units of res2, res3, ... (one entry of
    ``num_units`` per block), Detectron2's way (``MODEL.RESNETS`` widths, norm
    and stride placement) or pre-activation (``MODEL.SACT.UNIT_TYPE``)."""
    r = cfg.MODEL.RESNETS
    if any(r.DEFORM_ON_PER_STAGE[:len(num_units)]) or r.RES5_DILATION != 1:
        raise ValueError("sact-det supports neither deformable convolutions "
                         "(MODEL.RESNETS.DEFORM_ON_PER_STAGE) nor a dilated res5")
    if cfg.MODEL.SACT.UNIT_TYPE == "pre_activation":
        stem = PreActStem(in_channels=image_channels, out_channels=r.STEM_OUT_CHANNELS)
    else:
        stem = BasicStem(in_channels=image_channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    blocks = []
    for index, count in enumerate(num_units):
        blocks.append(make_units(cfg, count, in_channels=in_channels, bottleneck_channels=bottleneck,
                                 out_channels=out_channels, first_stride=1 if index == 0 else 2))
        in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2
    return stem, blocks


def halting_options(cfg) -> dict:
    """The halting-branch keyword arguments of :class:`AdaptiveStage` from
    ``MODEL.SACT``: the batch-norm factory of ``HALTING_NORM`` (``MODEL.RESNETS.NORM``)
    and ``HALTING_PADDING``."""
    s, norm = cfg.MODEL.SACT, cfg.MODEL.RESNETS.NORM
    if s.HALTING_NORM and not norm:
        raise ValueError("MODEL.SACT.HALTING_NORM needs a batch norm: set MODEL.RESNETS.NORM (BN, FrozenBN, SyncBN)")

    def factory(channels: int) -> nn.Module:
        return get_norm(norm, channels)
    return {"halting_norm": factory if s.HALTING_NORM else None, "halting_padding": s.HALTING_PADDING}


def padding_mask(image_sizes: Optional[Sequence[Tuple[int, int]]], x: torch.Tensor) -> Optional[torch.Tensor]:
    """Bool ``[B, 1, H, W]`` of the pixels of ``x`` inside each image (Detectron2
    pads at the bottom and right), or None when no image is padded."""
    if image_sizes is None or all(tuple(s) == tuple(x.shape[-2:]) for s in image_sizes):
        return None
    valid = torch.zeros((x.shape[0], 1) + tuple(x.shape[-2:]), dtype=torch.bool, device=x.device)
    for index, (h, w) in enumerate(image_sizes):
        valid[index, :, :h, :w] = True
    return valid


def stem_forward(stem: nn.Module, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Detectron2's ``BasicStem`` (7x7 conv, ReLU, 3x3 max-pool), with padded
    positions zeroed after the convolution and after the pool, so that the pool
    and the first block see an image alone's borders (ReLU outputs are >= 0, so
    a zero neighbour never wins the max). A stem with its own
    ``forward_masked`` (:class:`~sact_det.modeling.preact.PreActStem`) masks itself."""
    if valid is None:
        return stem(x)
    if hasattr(stem, "forward_masked"):
        return stem.forward_masked(x, valid)
    x = F.relu_(stem.conv1(x)) * subsample_valid(valid, 2)
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    return x * subsample_valid(valid, stem.stride)


class SACTResNet(Backbone):
    """ResNet stem + adaptive blocks res2-res4 or res2-res5 (Figs. 2, 3, 4)."""

    def __init__(self, stem, stages: Sequence[AdaptiveStage], out_features: Sequence[str],
                 freeze_at: int = 0, reference_units=None, execution: str = "dense",
                 sparse_max_active: float = 0.8, postnorm: Optional[nn.Module] = None):
        """
        Args:
            stem: Detectron2 ``BasicStem`` or :class:`~sact_det.modeling.preact.PreActStem`.
            stages: blocks res2, res3, ... in order (up to the last out feature).
            out_features: names of the blocks to output (e.g. ``["res4"]``).
            freeze_at: Detectron2's ``MODEL.BACKBONE.FREEZE_AT`` (1: stem, 2: stem
                and res2, ...). Only residual units freeze; halting branches train.
            reference_units: (stem, blocks) of the dense ResNet that FLOPs are
                reported against (built on the meta device: shapes only).
            execution: inference execution, "dense", "perforated" or "tiled"
                (:mod:`sact_det.modeling.sparse`); training always runs dense. May be
                changed at any time by assigning ``backbone.execution``.
            sparse_max_active: share of active positions above which a sparse
                executor runs a unit densely (see ``SparseStageExecutor``).
            postnorm: a pre-activation ResNet's final batch norm: the last
                block's output feature is ``relu(postnorm(x))`` (its ponder
                maps and the halting branches are unchanged).
        """
        super().__init__()
        self.stem = stem
        self.postnorm = postnorm
        self.stage_names = list(STAGE_NAMES[: len(stages)])
        for name, stage in zip(self.stage_names, stages):
            self.add_module(name, stage)
        unknown = set(out_features) - set(self.stage_names)
        if unknown:
            raise ValueError(f"MODEL.RESNETS.OUT_FEATURES: {sorted(unknown)} are not blocks of the "
                             f"SACT feature extractor; choose from {list(STAGE_NAMES)}")
        self._out_features = list(out_features)
        stride, channels = stem.stride, stem.out_channels
        self._out_feature_strides, self._out_feature_channels = {}, {}
        for name, stage in zip(self.stage_names, stages):
            stride *= stage.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = stage.out_channels
        self._reference_units = reference_units  # not a submodule: no parameters
        self._reference_flops = {}
        self.execution = execution
        self.sparse_max_active = sparse_max_active
        self._sparse = None  # SparseBackboneExecutor, rebuilt when the weights change
        if freeze_at >= 1:
            self.stem.freeze()
        for stage in stages[: max(freeze_at - 1, 0)]:
            for unit in stage.units:
                unit.freeze()

    @property
    def stages(self) -> List[AdaptiveStage]:
        return [getattr(self, name) for name in self.stage_names]

    @property
    def stage_strides(self) -> Dict[str, int]:
        """Stride of every block's output (and ponder map) w.r.t. the input image."""
        return dict(self._out_feature_strides)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name],
                                stride=self._out_feature_strides[name])
                for name in self._out_features}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.forward_with_sact(x)[0]

    def forward_with_sact(self, x: torch.Tensor, image_sizes: Optional[Sequence[Tuple[int, int]]] = None):
        """Features plus each block's :class:`StageOutput`.

        Args:
            x: ``[B, 3, H, W]`` normalised images, zero-padded at the bottom and right.
            image_sizes: each image's (h, w) before padding; positions outside
                an image are padding: they stay zero, never compute, halt, or count.
        """
        features, stage_outputs = {}, {}
        valid = padding_mask(image_sizes, x)
        sparse = self._sparse_executor() if not self.training and self.execution != "dense" else None
        x = sparse.stem(x, valid) if sparse else stem_forward(self.stem, x, valid)
        if not self.training:
            check_finite("block stem of the feature extractor", x, weights_finite=not sparse or sparse.stem_finite)
        valid = subsample_valid(valid, self.stem.stride)
        for index, (name, stage) in enumerate(zip(self.stage_names, self.stages)):
            executor = sparse.stages[index] if sparse and stage.adaptive else None
            out = executor(x, valid) if executor else stage(x, valid)
            x = out.features
            if not self.training:
                check_finite(f"block {name} of the feature extractor", x, out.scores_finite,
                             weights_finite=not executor or executor.weights_finite)
            valid = out.valid if valid is not None else None
            stage_outputs[name] = out
            if name in self._out_features:
                features[name] = x
                if self.postnorm is not None and name == self.stage_names[-1]:
                    features[name] = self._postnorm(x, valid)
            else:
                out.features = None  # only the next block needs it: do not hold it to the end
        return features, stage_outputs

    def _postnorm(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """``relu(postnorm(x))``, zero at padded positions."""
        x = F.relu(self.postnorm(x))
        return x if valid is None else x * valid.to(x.dtype)

    def _sparse_executor(self) -> SparseBackboneExecutor:
        if self._sparse is None or not self._sparse.is_current(self.execution, self.sparse_max_active):
            self._sparse = SparseBackboneExecutor(self.stem, self.stages, execution=self.execution,
                                                  max_active=self.sparse_max_active)
        return self._sparse

    def dense_reference_flops(self, image_size: Tuple[int, int]) -> int:
        """FLOPs of the dense reference ResNet (MODEL.SACT.FLOPS_REFERENCE_DEPTH)
        stem and blocks (as many as this network has) at ``image_size``: the
        denominator of "% of dense"."""
        if image_size not in self._reference_flops:
            stem, blocks = self._reference_units
            self._reference_flops[image_size] = dense_flops(stem, blocks, image_size)
        return self._reference_flops[image_size]


@BACKBONE_REGISTRY.register()
def build_sact_resnet_backbone(cfg, input_shape: ShapeSpec) -> SACTResNet:
    """``MODEL.BACKBONE.NAME: build_sact_resnet_backbone``; see ``add_sact_config``.
    The blocks up to the last of ``MODEL.RESNETS.OUT_FEATURES`` are built
    (``["res5"]``: res2-res5, the classifier's network)."""
    validate_sact_config(cfg)
    s, r = cfg.MODEL.SACT, cfg.MODEL.RESNETS
    out_features = list(r.OUT_FEATURES)
    num_blocks = max(STAGE_NAMES.index(f) + 1 if f in STAGE_NAMES else len(STAGE_NAMES)
                     for f in out_features)
    stem, blocks = build_resnet_units(cfg, units_per_block(cfg)[:num_blocks], input_shape.channels)
    stages = [AdaptiveStage(units, halting_type=s.TYPE, eps=s.EPS, halting_bias_init=s.HALTING_BIAS_INIT,
                            tile_size=s.TILE_SIZE, **halting_options(cfg)) for units in blocks]
    with torch.device("meta"):  # shapes only, for the "% of dense" denominator
        reference = build_resnet_units(cfg, reference_units_per_block(s.FLOPS_REFERENCE_DEPTH)[:num_blocks],
                                       input_shape.channels)
    postnorm = None
    if s.UNIT_TYPE == "pre_activation" and num_blocks == len(STAGE_NAMES):
        postnorm = build_postnorm(r.NORM, stages[-1].out_channels)
    backbone = SACTResNet(stem, stages, out_features, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
                          reference_units=reference, execution=s.EXECUTION, sparse_max_active=s.SPARSE_MAX_ACTIVE,
                          postnorm=postnorm)
    set_test_halting_offset(backbone, s.TEST_HALTING_OFFSET)
    return backbone
