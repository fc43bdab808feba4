"""The models a benchmark compares, built with the same weights."""
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ['build_compared_models', 'detectron2_detector', 'raw_image', 'with_tile_size', 'set_execution']


def build_compared_models(cfg, device, dtype):
    """(SACT detector, Detectron2's backbone with the same weights)."""
    from sact_det.engine.checkpoint import SACTCheckpointer

    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        SACTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        # Random box regression makes degenerate proposals that never reach the box
        # head; with it zeroed the proposals are anchors and POST_NMS_TOPK_TEST of
        # them are classified, as with a trained model.
        with torch.no_grad():
            deltas = model.proposal_generator.rpn_head.anchor_deltas
            deltas.weight.zero_()
            deltas.bias.zero_()
    model.to(device=device, dtype=dtype).eval()
    reference = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    result = reference.load_state_dict(model.backbone.state_dict(), strict=False)
    assert not result.missing_keys, result.missing_keys  # the same unit weights
    return model, reference.to(device=device, dtype=dtype).eval()


def detectron2_detector(cfg, sact_model, device, dtype):
    """Detectron2's own Faster R-CNN R-C4 with the SACT detector's weights."""
    d2 = cfg.clone()
    d2.defrost()
    d2.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    d2.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    d2.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    model = build_model(d2)
    model.load_state_dict(sact_model.state_dict(), strict=False)
    return model.to(device=device, dtype=dtype).eval()


def raw_image(cfg, x):
    """The un-normalised image a detector takes, from a benchmark input."""
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=x.device).view(3, 1, 1)
    return (x[0].float() * std + mean).to(x.dtype)


def with_tile_size(cfg, tile_size):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.SACT.TILE_SIZE = tile_size
    cfg.MODEL.SACT.EXECUTION = "tiled"
    return cfg


def set_execution(model, execution: str) -> None:
    model.backbone.execution = execution
    model.roi_heads.execution = execution
