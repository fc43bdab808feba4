"""Every mode a config key can name, in one place (validated by
:func:`sact_det.config.validate_sact_config`; the modules that implement a
mode import its list from here). Plain tuples: no Detectron2 import."""

# MODEL.SACT.TYPE: the halting of the feature extractor's blocks (section 2.2-2.3).
HALTING_TYPES = ("sact", "act", "none")
# MODEL.SACT.EXECUTION: how inference runs the adaptive blocks (sact_det.modeling.sparse).
EXECUTIONS = ("dense", "perforated", "tiled")
# The executions that skip the work at halted positions (all but "dense").
SPARSE_EXECUTIONS = ("perforated", "tiled")
# MODEL.SACT.HEAD_TYPE: the box head's res5, plain or ACT per proposal.
HEAD_TYPES = ("none", "act")
# MODEL.SACT.UNIT_TYPE: Detectron2's post-activation BottleneckBlock, or the
# pre-activation unit of He et al. 2016 that the paper's ImageNet models use.
UNIT_TYPES = ("post_activation", "pre_activation")
# MODEL.SACT.HALTING_PADDING: padding of the halting branch's 3x3 term (eq. 14):
# zeros (the paper's, TensorFlow's "SAME") or the border cells replicated.
HALTING_PADDINGS = ("zeros", "replicate")
# Meta-architectures built by sact-det: the detector and the ImageNet-stage classifier.
CLASSIFIER_META_ARCHITECTURE = "SACTClassifier"

# Residual units per block (res2, res3, res4) of the standard ResNets; res5 has 3 in all.
UNITS_PER_DEPTH = {50: (3, 4, 6), 101: (3, 4, 23), 152: (3, 8, 36)}
RES5_UNITS = 3
