"""The models: the paper's mechanism (:mod:`.sact`), its sparse inference
(:mod:`.sparse`), and the Detectron2 components built from them, registered on
import: the feature extractor (:mod:`.backbone`), the box head
(:mod:`.roi_heads`), the detector (:mod:`.meta_arch`) and the ImageNet-stage
classifier (:mod:`.classifier`), with pre-activation units (:mod:`.preact`), the
per-image report (:mod:`.report`), ponder maps (:mod:`.maps`) and FLOP counts
(:mod:`.flops`)."""
from sact_det.modeling.backbone import SACTResNet, build_sact_resnet_backbone
from sact_det.modeling.classifier import SACTClassifier
from sact_det.modeling.meta_arch import SACTRCNN
from sact_det.modeling.report import SACTReport
from sact_det.modeling.roi_heads import Block4ROIHeads

__all__ = ["SACTResNet", "build_sact_resnet_backbone", "SACTClassifier", "SACTRCNN", "SACTReport", "Block4ROIHeads"]
