"""Faster R-CNN with a SACT feature extractor: the ponder loss and per-image SACT outputs."""
from typing import Dict, List, Optional

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from sact_det.modeling.report import add_detector_flops, build_reports
from sact_det.utils.errors import NonFiniteOutputError

__all__ = ["SACTRCNN", "ponder_loss", "finite_at_inference"]


def _tensors(value) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _tensors(v)] if isinstance(value, (tuple, list)) else []


def finite_at_inference(head: str):
    """A forward hook: at inference, raises :class:`NonFiniteOutputError` naming
    ``head`` when the module's output tensors hold NaN or infinity. Detectron2's
    proposal and box post-processing silently drop such predictions, which
    would turn broken weights into a plausible report with fewer detections."""
    def hook(module, inputs, outputs):
        if module.training:
            return
        tensors = _tensors(outputs)
        if tensors and not torch.stack([torch.isfinite(t).all() for t in tensors]).all():
            raise NonFiniteOutputError(f"the {head} produced non-finite outputs (NaN or inf): the model "
                                       "weights (MODEL.WEIGHTS) are broken")
    return hook


def ponder_loss(stage_outputs: Dict[str, "StageOutput"], ponder_weight: float) -> Optional[torch.Tensor]:  # noqa: F821
    """``tau * mean_batch(sum_k rho_k)`` over the adaptive blocks (eq. 13), None
    without any; logs each block's mean units and ponder cost, and the total,
    to the event storage (``metrics.json``, TensorBoard, the console line)."""
    adaptive = {k: v for k, v in stage_outputs.items() if v.ponder_map is not None}
    storage = get_event_storage()
    for name, out in stage_outputs.items():
        storage.put_scalar(f"sact/units/{name}", out.mean_units().mean().item())
    if not adaptive:
        return None
    ponder = {name: out.ponder_cost() for name, out in adaptive.items()}
    for name, value in ponder.items():
        storage.put_scalar(f"sact/ponder_cost/{name}", value.mean().item())
    total = torch.stack(list(ponder.values())).sum(dim=0)  # sum_k rho_k per image
    storage.put_scalar("sact/ponder_cost/total", total.mean().item())
    return ponder_weight * total.mean()


@META_ARCH_REGISTRY.register()
class SACTRCNN(GeneralizedRCNN):
    """Detectron2's ``GeneralizedRCNN`` whose backbone reports its adaptive computation.

    Training adds ``loss_ponder = tau * mean_batch(sum_k rho_k)`` (eq. 13; tau
    acts on the feature extractor only, sec. 4.2) and logs each block's ponder
    cost and mean units to the event storage (``metrics.json``, TensorBoard).
    Inference returns, next to ``"instances"``, a :class:`~sact_det.modeling.report.SACTReport`
    per image as ``"sact"``: feature-extractor FLOPs (absolute, per block, % of
    dense), ponder cost and mean units per block, and ponder cost maps.
    Non-finite features, halting scores (checked by the backbone and the box
    head's res5), RPN or box predictions at inference are an error naming the
    block or head.
    """

    @configurable
    def __init__(self, *, ponder_weight: float, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(self.backbone, "forward_with_sact"):
            raise TypeError(
                "SACTRCNN needs a SACT backbone (MODEL.BACKBONE.NAME: build_sact_resnet_backbone), "
                f"got {type(self.backbone).__name__}")
        if self.proposal_generator is None:
            raise ValueError("SACTRCNN needs a proposal generator (MODEL.PROPOSAL_GENERATOR.NAME: RPN)")
        self.ponder_weight = ponder_weight
        for module, head in ((getattr(self.proposal_generator, "rpn_head", None), "RPN head"),
                             (getattr(self.roi_heads, "box_predictor", None), "box head (res5 and box predictor)")):
            if module is not None:
                module.register_forward_hook(finite_at_inference(head))

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["ponder_weight"] = cfg.MODEL.SACT.TAU
        return ret

    def _extract(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        features, stage_outputs = self.backbone.forward_with_sact(images.tensor, images.image_sizes)
        return images, features, stage_outputs

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        images, features, stage_outputs = self._extract(batched_inputs)
        gt_instances = ([x["instances"].to(self.device) for x in batched_inputs]
                        if "instances" in batched_inputs[0] else None)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)

        losses = {**detector_losses, **proposal_losses}  # with loss_ponder_head for an ACT box head
        # The feature extractor's blocks; an ACT box head logs sact/*/head itself.
        loss = ponder_loss(stage_outputs, self.ponder_weight)
        if loss is not None:
            losses["loss_ponder"] = loss
        return losses

    def inference(self, batched_inputs: List[Dict[str, torch.Tensor]],
                  detected_instances: Optional[List[Instances]] = None,
                  do_postprocess: bool = True):
        assert not self.training
        images, features, stage_outputs = self._extract(batched_inputs)
        head_reports = None
        if detected_instances is None:
            proposals, _ = self.proposal_generator(images, features, None)
            results, head_reports = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        if not do_postprocess:
            return results
        processed = GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        reports = build_reports(self.backbone, stage_outputs, images.image_sizes)
        if head_reports:
            stride = self.backbone.output_shape()[self.roi_heads.in_features[0]].stride
            add_detector_flops(reports, self.proposal_generator.rpn_head, stride, head_reports,
                               self.roi_heads.res5.num_units)
        for output, report in zip(processed, reports):
            output["sact"] = report
        return processed
