"""Box classifier: ResNet block 4 (res5) on the region proposals' features, sec. 4.2,
optionally with ACT over proposals.

As in [16] and the paper, blocks 1-3 are the feature extractor and block 4
classifies each proposal: ROIAlign features of a proposal go through the res5
units, are averaged over space and fed to the box predictor. Its parameters
are named ``roi_heads.res5.{i}.*`` so that ``res5.*`` weights of the same
ImageNet checkpoint load into it.

``MODEL.SACT.HEAD_TYPE act`` (beyond the paper; off by default) makes res5 an
ACT block over proposals (eq. 6, Alg. 1): classifying one proposal is an
image-level problem, and most proposals are easy background. A halting branch
after every unit but the last (``roi_heads.res5.halting.{l}``) scores the
unit's output pooled over the proposal; each proposal runs units until its
cumulative score reaches 1 - eps, and the box predictor reads the
halting-weighted sum of the unit outputs (eq. 10). Training runs every unit on
every proposal (masked: exact gradients, every parameter used) and adds
``loss_ponder_head = HEAD_TAU * mean rho`` over the sampled proposals. At
inference, ``EXECUTION dense`` runs the head masked, as trained; ``perforated``
and ``tiled`` gather the still-active proposals before each unit
(:class:`~sact_det.modeling.sparse.head.GatheredHeadExecutor`).

With pre-activation units (``MODEL.SACT.UNIT_TYPE pre_activation``) res5's
output goes through the network's final BN + ReLU (``roi_heads.postnorm``, the
classifier's ``backbone.postnorm``) before the spatial mean.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.utils.events import get_event_storage

from sact_det.modeling.backbone import halting_options, make_units
from sact_det.modeling.flops import box_head_flops
from sact_det.modeling.preact import build_postnorm
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage, check_finite
from sact_det.modeling.sact.halting import set_test_halting_offset
from sact_det.modeling.sparse.head import GatheredHeadExecutor

__all__ = ["HeadReport", "Block4ROIHeads"]


@dataclass
class HeadReport:
    """The box head's computation on one image (inference)."""

    num_proposals: int
    flops: int  # res5 units and halting branches as evaluated, and the box predictor
    dense_flops: int  # every res5 unit on every proposal, no halting branches
    units: Optional[torch.Tensor] = None  # int [R]: units each proposal ran (ACT head), on the CPU

    @property
    def mean_units(self) -> Optional[float]:
        return float(self.units.float().mean()) if self.units is not None and self.units.numel() else None

    def halting_shares(self, num_units: int) -> Optional[List[float]]:
        """Share of the proposals that halted after each unit (ACT head)."""
        if self.units is None or not self.units.numel():
            return None
        counts = torch.bincount(self.units.long(), minlength=num_units + 1)[1:]
        return (counts.float() / self.units.numel()).tolist()


@ROI_HEADS_REGISTRY.register()
class Block4ROIHeads(Res5ROIHeads):
    """Detectron2's res5 ROI head with a configurable number of res5 units
    (``MODEL.SACT.RES5_NUM_UNITS``; 3 in every standard ResNet) and, with
    ``MODEL.SACT.HEAD_TYPE act``, ACT over proposals (see the module docstring)."""

    @configurable
    def __init__(self, *, head_tau: float = 0.0, execution: str = "dense", postnorm: Optional[torch.nn.Module] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if self.mask_on:
            raise ValueError("MODEL.MASK_ON: sact-det's box head has no mask branch")
        self.head_tau = head_tau
        self.execution = execution
        # Pre-activation units: the final BN (+ ReLU) after res5, as the classifier's backbone.postnorm.
        self.postnorm = postnorm
        self._executor: Optional[GatheredHeadExecutor] = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["head_tau"] = cfg.MODEL.SACT.HEAD_TAU
        ret["execution"] = cfg.MODEL.SACT.EXECUTION
        if cfg.MODEL.SACT.UNIT_TYPE == "pre_activation":
            ret["postnorm"] = build_postnorm(cfg.MODEL.RESNETS.NORM, ret["res5"].out_channels)
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        r, s = cfg.MODEL.RESNETS, cfg.MODEL.SACT
        if r.DEFORM_ON_PER_STAGE[-1]:
            raise ValueError("MODEL.RESNETS.DEFORM_ON_PER_STAGE: deformable res5 is not supported")
        out_channels = r.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
        units = make_units(cfg, s.RES5_NUM_UNITS, in_channels=out_channels // 2,
                           bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8,
                           out_channels=out_channels, first_stride=2)
        # ACT over proposals: one halting score per proposal (eq. 6); "none": plain res5.
        res5 = AdaptiveStage(units, halting_type=s.HEAD_TYPE, eps=s.EPS, halting_bias_init=s.HALTING_BIAS_INIT,
                             **halting_options(cfg))
        set_test_halting_offset(res5, s.TEST_HALTING_OFFSET)
        return res5, out_channels

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        """The box predictor's input ``[R, C]`` from res5's output map ``[R, C, h, w]``:
        its spatial mean, after the postnorm of pre-activation units."""
        if self.postnorm is not None:
            features = F.relu(self.postnorm(features))
        return features.mean(dim=(2, 3))

    @property
    def adaptive(self) -> bool:
        return self.res5.adaptive

    def forward(self, images, features: Dict[str, torch.Tensor], proposals, targets=None):
        """Detectron2's ``Res5ROIHeads.forward``; at inference the second value is
        a :class:`HeadReport` per image instead of an empty dict."""
        del images
        if self.training:
            proposals = self.label_and_sample_proposals(proposals, targets)
        proposal_boxes = [x.proposal_boxes for x in proposals]
        pooled = self.pooler([features[f] for f in self.in_features], proposal_boxes)
        if self.training:
            out = self.res5(pooled)
            box_features, units = self._pool(out.features), out.num_units_map[:, 0, 0]
        else:
            box_features, units = self.run_res5(pooled)
        predictions = self.box_predictor(box_features)
        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.adaptive:
                rho = out.ponder_cost()  # per proposal: N + R (eq. 11)
                losses["loss_ponder_head"] = self.head_tau * rho.mean()
                storage = get_event_storage()
                storage.put_scalar("sact/ponder_cost/head", rho.mean().item())
                storage.put_scalar("sact/units/head", units.float().mean().item())
            return [], losses
        instances, kept = self.box_predictor.inference(predictions, proposals)
        return instances, self._reports(proposals, units, instances, kept)

    @torch.no_grad()
    def run_res5(self, pooled: torch.Tensor):
        """Inference of res5 on ``[R, C, h, w]`` pooled proposal features: the box
        predictor's input ``[R, C]`` (the spatial mean of the block output) and
        the units each proposal ran ``[R]``. Non-finite features or halting
        scores are an error naming the block (:func:`~sact_det.modeling.sact.adaptive_stage.check_finite`)."""
        if self.execution == "dense":  # masked, as trained
            out = self.res5(pooled)
            features, units = self._pool(out.features), out.num_units_map[:, 0, 0]
            scores_finite, weights_finite = out.scores_finite, True
        else:
            executor = self._gathered_executor()
            features, units, scores_finite = executor(pooled)
            weights_finite = executor.weights_finite
        check_finite("block res5 of the box head", features, scores_finite, weights_finite)
        return features, units

    def _gathered_executor(self) -> GatheredHeadExecutor:
        if self._executor is None or not self._executor.is_current():
            self._executor = GatheredHeadExecutor(self.res5)
        return self._executor

    def _reports(self, proposals, units: torch.Tensor, instances, kept) -> List[HeadReport]:
        """Per image: the head's FLOPs and units per proposal; each detection gets
        the units its proposal ran (``head_units``) when the head is adaptive."""
        reports, start = [], 0
        for image_proposals, image_instances, image_kept in zip(proposals, instances, kept):
            count = len(image_proposals)
            image_units = units[start:start + count].cpu()
            start += count
            flops = box_head_flops(self.res5, self.box_predictor, image_units, self.pooler.output_size)
            dense = box_head_flops(self.res5, self.box_predictor, torch.full((count,), self.res5.num_units),
                                   self.pooler.output_size, halting=False)
            if self.adaptive:
                image_instances.head_units = image_units[image_kept.cpu()].to(image_instances.scores.device)
            reports.append(HeadReport(count, flops, dense, image_units if self.adaptive else None))
        return reports
