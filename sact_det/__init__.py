"""sact-det: Spatially Adaptive Computation Time (Figurnov et al., CVPR 2017) for Detectron2.

Importing the package registers its components with Detectron2:
``build_sact_resnet_backbone`` (BACKBONE_REGISTRY), ``Block4ROIHeads``
(ROI_HEADS_REGISTRY) and ``SACTRCNN`` (META_ARCH_REGISTRY).

The public names are the ones below and those of the subpackages' ``__init__``
(``sact_det.config``, ``sact_det.data``, ``sact_det.modeling``,
``sact_det.engine``, ``sact_det.evaluation``); ``sact_det.apps`` holds what the
command-line tools run.
"""
import warnings

with warnings.catch_warnings():
    # Detectron2 and fvcore call torch.jit.script at import time, which this
    # torch deprecates: harmless, and not the user's to fix. Scoped to these imports.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from sact_det import data  # registers the synthetic datasets
    from sact_det.config import add_sact_config, get_sact_cfg
    from sact_det.engine import SACTPredictor
    from sact_det.modeling import SACTRCNN, Block4ROIHeads, SACTResNet, build_sact_resnet_backbone

__all__ = ["add_sact_config", "get_sact_cfg", "SACTResNet", "build_sact_resnet_backbone", "Block4ROIHeads",
           "SACTRCNN", "SACTPredictor"]
