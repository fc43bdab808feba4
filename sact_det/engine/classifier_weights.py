"""A detector initialised from an ImageNet-stage classifier's checkpoint
(section 4.2: "We reuse the models pretrained on the ImageNet classification task").

The classifier (:class:`~sact_det.modeling.classifier.SACTClassifier`) holds the
stem and res2-res5 with their halting branches in ``backbone.*``, the
pre-activation ``backbone.postnorm`` and its ``linear`` layer. In the detector,
the stem, res2-res4 and their halting branches are the feature extractor
(``backbone.*``: same names), res5 is the box head (``roi_heads.res5.*``) and the
postnorm follows it (``roi_heads.postnorm``). :func:`adapt_classifier_checkpoint`
renames the classifier's keys accordingly before the checkpoint is loaded, and
logs what the detector does not use: the linear layer, and res5's halting
branches or their spatial terms when the box head is plain or ACT.
"""
import logging
from typing import Collection, Dict, List, Tuple

__all__ = ["is_classifier_checkpoint", "detector_weights_from_classifier", "adapt_classifier_checkpoint"]

# classifier key prefix -> detector key prefix
RENAMES = (("backbone.res5.", "roi_heads.res5."), ("backbone.postnorm.", "roi_heads.postnorm."))


def is_classifier_checkpoint(state_dict: Collection[str]) -> bool:
    """Whether a state dict (its keys) is a classifier's: a linear layer and res5 in the backbone."""
    return "linear.weight" in state_dict and any(k.startswith("backbone.res5.") for k in state_dict)


def _renamed(key: str) -> str:
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def detector_weights_from_classifier(state_dict: Dict, model_keys: Collection[str]) -> Tuple[Dict, List[str]]:
    """(the classifier's weights under the detector's names, restricted to the
    keys the detector has; the classifier keys left out, by their own names)."""
    model_keys = set(model_keys)
    weights, unused = {}, []
    for key, value in state_dict.items():
        new = _renamed(key)
        if new in model_keys:
            weights[new] = value
        elif not key.endswith("num_batches_tracked"):  # a BN's step counter: frozen norms have none
            unused.append(key)
    return weights, unused


def adapt_classifier_checkpoint(checkpoint: Dict, model_keys: Collection[str], source: str,
                                logger: logging.Logger) -> bool:
    """When ``checkpoint["model"]`` is a classifier's and the model is a detector
    (it has no ``backbone.res5``), replaces it by the detector's weights and logs
    what was loaded where and what was not used. Returns whether it did."""
    state_dict = checkpoint.get("model")
    if (not isinstance(state_dict, dict) or not is_classifier_checkpoint(state_dict)
            or any(k.startswith("backbone.res5.") for k in model_keys)):
        return False
    checkpoint["model"], unused = detector_weights_from_classifier(state_dict, model_keys)
    logger.info(f"{source} is a classifier's checkpoint: its stem, res2-res4 and their halting branches load "
                "into the feature extractor (backbone.*), res5 into the box head (roi_heads.res5.*)"
                + (", its postnorm after it (roi_heads.postnorm)" if "backbone.postnorm.weight" in state_dict else ""))
    if unused:
        logger.info(f"{len(unused)} classifier weights are not used by the detector: " + ", ".join(unused))
    return True
