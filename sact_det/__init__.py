"""sact-det: Spatially Adaptive Computation Time (Figurnov et al., CVPR 2017) for Detectron2.

Importing the package registers its components with Detectron2:
``build_sact_resnet_backbone`` (BACKBONE_REGISTRY), ``Block4ROIHeads``
(ROI_HEADS_REGISTRY) and ``SACTRCNN`` (META_ARCH_REGISTRY).
"""
import warnings

with warnings.catch_warnings():
    # Detectron2 and fvcore call torch.jit.script at import time, which this
    # torch deprecates: harmless, and not the user's to fix. Scoped to these imports.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from .config import add_sact_config, get_sact_cfg
    from .backbone import SACTResNet, build_sact_resnet_backbone
    from .roi_heads import Block4ROIHeads
    from .meta_arch import SACTRCNN
    from . import data  # registers the synthetic datasets

__all__ = ["add_sact_config", "get_sact_cfg", "SACTResNet", "build_sact_resnet_backbone", "Block4ROIHeads", "SACTRCNN"]
