"""Detection-side metrics of ponder maps: ROC AUC, AUC-Judd and object agreement.

* :func:`roc_auc`: area under the ROC curve with ties ranked.
* :func:`auc_judd`: AUC-Judd as the MIT saliency benchmark defines it
  (thresholds at the saliency values of the fixated pixels; true positive rate
  over fixations, false positive rate over all other pixels), used by the
  CAT2000 protocol of :mod:`sact_det.evaluation.saliency`.
* :func:`object_auc`: how well a ponder map predicts the pixels of the objects
  of a detection dataset, reported by the evaluator next to mAP and FLOPs.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.stats import rankdata

from sact_det.modeling.maps import image_to_grid

__all__ = ["auc_judd", "roc_auc", "object_mask", "object_cells", "object_auc", "object_agreement"]


def auc_judd(saliency: np.ndarray, fixations: np.ndarray, jitter: bool = True, seed: int = 0) -> float:
    """AUC-Judd of a saliency map for a binary fixation map of the same size.

    As in the MIT saliency benchmark: the map is min-max normalised (and, with
    ``jitter``, given a tiny deterministic noise that breaks ties); each fixated
    pixel's value is a threshold; at threshold ``t`` the true positive rate is
    the share of fixations with value >= t and the false positive rate the share
    of the other pixels with value >= t; the curve runs from (0, 0) to (1, 1)
    and its area is integrated with the trapezoid rule.
    """
    if saliency.shape != fixations.shape:
        raise ValueError(f"saliency map {saliency.shape} and fixation map {fixations.shape} differ in size")
    fixated = fixations > 0
    num_fixations = int(fixated.sum())
    if num_fixations == 0:
        raise ValueError("the fixation map has no fixations")
    values = saliency.astype(np.float64)
    if jitter:
        values = values + np.random.default_rng(seed).random(values.shape) / 1e7
    values = (values - values.min()) / max(values.max() - values.min(), 1e-12)
    thresholds = np.sort(values[fixated])[::-1]
    ordered = np.sort(values.ravel())
    above = ordered.size - np.searchsorted(ordered, thresholds, side="left")  # pixels >= threshold
    hits = np.arange(1, num_fixations + 1)
    tpr = np.concatenate([[0.0], hits / num_fixations, [1.0]])
    fpr = np.concatenate([[0.0], (above - hits) / (values.size - num_fixations), [1.0]])
    return float(np.trapz(tpr, fpr))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels``, i.e. the
    probability that a positive scores above a negative, ties counting half."""
    labels = labels.astype(bool).ravel()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs both positives and negatives")
    ranks = rankdata(scores.ravel())
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def object_mask(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """Bool ``[height, width]`` of the pixels inside the (non-crowd) objects: their
    masks when given (polygons or RLE), else their boxes (XYWH_ABS)."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=bool)
    for ann in annotations:
        if ann.get("iscrowd", 0):
            continue
        segmentation = ann.get("segmentation")
        if segmentation:
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            mask |= mask_utils.decode(rle).astype(bool)
        else:
            x, y, w, h = ann["bbox"]
            mask[int(round(y)): int(round(y + h)), int(round(x)): int(round(x + w))] = True
    return mask


def object_cells(objects: np.ndarray, input_size: Tuple[int, int], grid_shape: Tuple[int, int],
                 stride: int) -> np.ndarray:
    """Bool ``grid_shape``: the cells of a map of ``stride`` that objects cover
    at least half of.

    Args:
        objects: bool object pixels over the original image (:func:`object_mask`).
        input_size: (height, width) of the network input the grid covers.
    """
    return image_to_grid(objects, input_size, tuple(grid_shape), stride) >= 0.5


def object_auc(ponder_grid: torch.Tensor, objects: np.ndarray, input_size: Tuple[int, int],
               stride: int) -> float:
    """ROC AUC of a ponder map ``[h, w]`` (on its grid, of ``stride`` input
    pixels per cell) predicting the object cells (:func:`object_cells`)."""
    return roc_auc(np.asarray(ponder_grid), object_cells(objects, input_size, tuple(ponder_grid.shape), stride))


def object_agreement(report, objects: np.ndarray, styled_objects: Optional[Dict[str, np.ndarray]] = None) -> dict:
    """Where an image's computation went, from its
    :class:`~sact_det.modeling.report.SACTReport` and its object pixels: the ROC AUC of
    the total ponder map for the object cells, and per block the AUC and the
    mean ponder cost and mean units evaluated (N) on object and on background
    cells. A block whose grid has no object cell (small objects on a coarse
    grid) or no background cell gets None.

    ``styled_objects``: the object pixels of each kind of object (the annotations'
    ``"style"``); then also, per kind and block, the mean ponder cost and units
    on the cells that objects of that kind cover at least half of (None where
    they cover none).
    """
    styled_objects = styled_objects or {}
    result = {"object_auc": None, "object_auc_per_block": {}, "ponder_on_objects": {},
              "ponder_on_background": {}, "units_on_objects": {}, "units_on_background": {},
              "ponder_on_style": {style: {} for style in styled_objects},
              "units_on_style": {style: {} for style in styled_objects}}
    cells = object_cells(objects, report.image_size, tuple(report.ponder_map.shape), report.ponder_map_stride)
    if cells.any() and not cells.all():
        result["object_auc"] = roc_auc(report.ponder_map.numpy(), cells)
    for block, ponder in report.ponder_maps.items():
        ponder, units = ponder.numpy(), report.units_maps[block].numpy()
        stride = report.ponder_strides[block]
        cells = object_cells(objects, report.image_size, ponder.shape, stride)
        usable = cells.any() and not cells.all()
        result["object_auc_per_block"][block] = roc_auc(ponder, cells) if usable else None
        for name, value_map in (("ponder", ponder), ("units", units)):
            result[f"{name}_on_objects"][block] = _mean_on(value_map, cells) if usable else None
            result[f"{name}_on_background"][block] = _mean_on(value_map, ~cells) if usable else None
        for style, pixels in styled_objects.items():
            style_cells = object_cells(pixels, report.image_size, ponder.shape, stride)
            result["ponder_on_style"][style][block] = _mean_on(ponder, style_cells)
            result["units_on_style"][style][block] = _mean_on(units, style_cells)
    return result


def _mean_on(value_map: np.ndarray, cells: np.ndarray) -> Optional[float]:
    """Mean of a map over the selected cells; None when none is."""
    return float(value_map[cells].mean()) if cells.any() else None
