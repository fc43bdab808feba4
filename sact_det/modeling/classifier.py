"""The ImageNet-stage classifier (section 4.1): a SACT ResNet with all four
blocks, global average pooling and a linear layer, ``MODEL.META_ARCHITECTURE
SACTClassifier``.

The paper trains its ACT/SACT ResNets on ImageNet first (Figs. 7-9) and
fine-tunes those models for detection (4.2) and saliency (4.3); a detector's
``MODEL.WEIGHTS`` may be this classifier's checkpoint
(:mod:`sact_det.engine.checkpoint`).
"""
from typing import Dict, List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

from sact_det.modeling.meta_arch import finite_at_inference, ponder_loss
from sact_det.modeling.report import add_classifier_flops, build_reports
from sact_det.modeling.sact.halting import masked_global_average

__all__ = ["SACTClassifier"]


@META_ARCH_REGISTRY.register()
class SACTClassifier(nn.Module):
    """Image classifier on a SACT backbone (``build_sact_resnet_backbone`` with
    ``MODEL.RESNETS.OUT_FEATURES ["res5"]``).

    Inputs are Detectron2-style dicts: ``"image"`` (``[3, H, W]``, ``INPUT.FORMAT``,
    0-255) and, for training, ``"label"`` (the class index). Images of different
    sizes are padded; pooling averages each image's own positions, so an
    image's output does not depend on its batch.

    Training returns ``loss_cls`` (cross-entropy, with ``MODEL.CLASSIFIER.LABEL_SMOOTHING``)
    and ``loss_ponder = tau * mean_batch(sum_k rho_k)`` over the four blocks
    (eq. 13, ``MODEL.SACT.TAU``), and logs the batch's top-1 accuracy and each
    block's ponder cost and units. Inference returns per image ``"scores"``
    (softmax probabilities ``[NUM_CLASSES]``) and ``"sact"``, the
    :class:`~sact_det.modeling.report.SACTReport` of the whole classifier
    (stem + res2-res5 + the linear layer, and its dense reference).
    """

    @configurable
    def __init__(self, *, backbone, num_classes: int, ponder_weight: float, pixel_mean, pixel_std,
                 label_smoothing: float = 0.0):
        super().__init__()
        if not hasattr(backbone, "forward_with_sact"):
            raise TypeError("SACTClassifier needs a SACT backbone (MODEL.BACKBONE.NAME: build_sact_resnet_backbone), "
                            f"got {type(backbone).__name__}")
        self.backbone = backbone
        self.in_feature = backbone._out_features[-1]
        self.linear = nn.Linear(backbone.output_shape()[self.in_feature].channels, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)
        self.linear.register_forward_hook(finite_at_inference("linear classifier"))
        self.ponder_weight = ponder_weight
        self.label_smoothing = label_smoothing
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        return {
            "backbone": build_backbone(cfg),
            "num_classes": cfg.MODEL.CLASSIFIER.NUM_CLASSES,
            "ponder_weight": cfg.MODEL.SACT.TAU,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "label_smoothing": cfg.MODEL.CLASSIFIER.LABEL_SMOOTHING,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images)

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        features, stage_outputs = self.backbone.forward_with_sact(images.tensor, images.image_sizes)
        pooled = masked_global_average(features[self.in_feature], stage_outputs[self.in_feature].valid)
        logits = self.linear(pooled)
        if self.training:
            labels = torch.as_tensor([x["label"] for x in batched_inputs], dtype=torch.long, device=self.device)
            losses = {"loss_cls": F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)}
            get_event_storage().put_scalar("cls_accuracy", (logits.argmax(1) == labels).float().mean().item())
            loss = ponder_loss(stage_outputs, self.ponder_weight)
            if loss is not None:
                losses["loss_ponder"] = loss
            return losses
        reports = build_reports(self.backbone, stage_outputs, images.image_sizes)
        add_classifier_flops(reports, self.linear)
        scores = logits.float().softmax(dim=1)
        return [{"scores": image_scores, "sact": report} for image_scores, report in zip(scores, reports)]
