"""Ponder cost maps as saliency maps: section 4.3 and supplement A.3.

* :func:`postprocess`: eqs. (15)-(18), min-max normalisation, Gaussian blur of
  std ``s`` and ``gamma`` times a centred Gaussian baseline.
* :func:`evaluate_cat2000`: the protocol on the CAT2000 layout
  (``Stimuli/<category>/*.jpg``, fixation locations in ``FIXATIONLOCS/<category>/*.mat``
  or binary maps in ``FIXATIONMAPS/<category>/*``): ``s`` and ``gamma`` chosen
  by grid search on the first half of each category's images, AUC-Judd reported
  on the second half, per category and overall, with the centre baseline alone
  (AUC-Judd from :mod:`sact_det.evaluation.metrics`).
"""
import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy.io import loadmat

from sact_det.data.images import is_image_file
from sact_det.evaluation.metrics import auc_judd

__all__ = ["center_baseline", "postprocess", "load_fixations", "Cat2000Image", "index_cat2000",
           "evaluate_cat2000", "saliency_figure"]

logger = logging.getLogger("sact_det")


def center_baseline(height: int, width: int, relative_std: float = 0.25) -> np.ndarray:
    """A centred Gaussian in [0, 1] with a std of ``relative_std`` times each
    side: our stand-in for the MIT benchmark's ``center.mat`` reference map."""
    ys = (np.arange(height) - (height - 1) / 2) / (relative_std * height)
    xs = (np.arange(width) - (width - 1) / 2) / (relative_std * width)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))


def _normalised_blur(ponder: np.ndarray, sigma: float) -> np.ndarray:
    """Eqs. (15)-(17): min-max normalised, blurred by a Gaussian of std ``sigma``."""
    span = float(ponder.max() - ponder.min())
    normalised = (ponder - ponder.min()) / span if span > 0 else np.zeros_like(ponder, dtype=np.float64)
    return cv2.GaussianBlur(normalised.astype(np.float64), (0, 0), sigma) if sigma > 0 else normalised


def postprocess(ponder: np.ndarray, sigma: float, gamma: float) -> np.ndarray:
    """Eqs. (15)-(18): ``normalise(ponder)`` blurred by a Gaussian of std
    ``sigma`` (pixels of ``ponder``), plus ``gamma`` times the centre baseline."""
    return _normalised_blur(ponder, sigma) + gamma * center_baseline(*ponder.shape)


def load_fixations(path: str) -> np.ndarray:
    """Binary fixation locations from a ``.mat`` (``fixLocs`` or its only array)
    or a binary image. A continuous fixation density map is refused: AUC-Judd
    needs fixation locations."""
    if path.lower().endswith(".mat"):
        data = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        array = data.get("fixLocs")
        if array is None:
            if len(data) != 1:
                raise ValueError(f"{path}: expected a 'fixLocs' array, found {sorted(data)}")
            array = next(iter(data.values()))
    else:
        array = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if array is None:
            raise ValueError(f"{path}: cannot read the fixation map")
        if len(np.unique(array)) > 2:
            raise ValueError(f"{path}: a continuous fixation density map; AUC-Judd needs fixation "
                             "locations (FIXATIONLOCS/<category>/<name>.mat or a binary map)")
    return np.asarray(array) > 0


@dataclass
class Cat2000Image:
    category: str
    stimulus: str
    fixations: Optional[str]  # None when missing


def index_cat2000(root: str) -> List[Cat2000Image]:
    """Stimuli of ``root/Stimuli/<category>/`` with their fixation files
    (``FIXATIONLOCS/<category>/<name>.mat`` preferred, else
    ``FIXATIONMAPS/<category>/<name>.*``)."""
    stimuli_root = os.path.join(root, "Stimuli")
    if not os.path.isdir(stimuli_root):
        raise FileNotFoundError(f"{stimuli_root} does not exist: expected the CAT2000 layout "
                                "Stimuli/<category>/*.jpg with FIXATIONMAPS/ or FIXATIONLOCS/ beside it")
    images = []
    for category in sorted(os.listdir(stimuli_root)):
        folder = os.path.join(stimuli_root, category)
        if not os.path.isdir(folder):
            continue
        for name in sorted(f for f in os.listdir(folder) if is_image_file(f)):
            stem = os.path.splitext(name)[0]
            candidates = [os.path.join(root, "FIXATIONLOCS", category, stem + ".mat")]
            candidates += sorted(glob.glob(os.path.join(root, "FIXATIONMAPS", category, stem + ".*")))
            found = next((c for c in candidates if os.path.isfile(c)), None)
            images.append(Cat2000Image(category, os.path.join(folder, name), found))
    if not images:
        raise FileNotFoundError(f"no images in {stimuli_root}/<category>/")
    return images


@dataclass
class _Prepared:
    image: Cat2000Image
    ponder: np.ndarray  # total ponder map at the model input resolution
    fixations: np.ndarray  # bool, at the stimulus resolution


@dataclass
class Cat2000Result:
    sigma: float
    gamma: float
    tuning_auc: float
    categories: Dict[str, dict] = field(default_factory=dict)  # per category: SACT and centre AUC
    overall: Dict[str, float] = field(default_factory=dict)
    images: List[dict] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)


def _auc_at_fixation_size(saliency: np.ndarray, fixations: np.ndarray) -> float:
    height, width = fixations.shape
    resized = cv2.resize(saliency.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return auc_judd(resized, fixations)


def evaluate_cat2000(ponder_fn: Callable[[np.ndarray], np.ndarray], root: str,
                     size: Tuple[int, int] = (640, 360), sigmas: Sequence[float] = (0, 2, 5, 10, 15, 20),
                     gammas: Sequence[float] = (0, 0.005, 0.05, 0.2, 0.5, 1.0),
                     progress: Callable = lambda items, **kw: items) -> Cat2000Result:
    """The protocol of section 4.3 / A.3 on a CAT2000-layout directory.

    Args:
        ponder_fn: RGB image (already resized to ``size``) -> total ponder map,
            any resolution (it is resized to ``size``).
        size: (width, height) the stimuli are resized to (640x360 for the COCO model).
        sigmas: blur stds (pixels at ``size``) and gammas (centre weights) searched.
    Images whose fixations are missing, empty, or of another size than their
    stimulus are skipped and listed in ``skipped`` with the reason.
    """
    width, height = size
    prepared: List[_Prepared] = []
    result = Cat2000Result(sigma=float("nan"), gamma=float("nan"), tuning_auc=float("nan"))
    for item in progress(index_cat2000(root), desc="ponder maps", unit="image"):
        stimulus = cv2.imread(item.stimulus, cv2.IMREAD_COLOR)
        reason = None
        if stimulus is None:
            reason = "cannot read the stimulus"
        elif item.fixations is None:
            reason = "no fixation file"
        else:
            try:
                fixations = load_fixations(item.fixations)
            except (ValueError, OSError) as e:
                reason = str(e)
            else:
                if fixations.shape != stimulus.shape[:2]:
                    reason = (f"fixation map {fixations.shape} and stimulus {stimulus.shape[:2]} "
                              "differ in size")
                elif not fixations.any():
                    reason = "no fixations"
        if reason:
            logger.warning(f"{item.stimulus}: {reason}; skipped")
            result.skipped.append((item.stimulus, reason))
            continue
        rgb = cv2.cvtColor(cv2.resize(stimulus, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        ponder = cv2.resize(np.asarray(ponder_fn(rgb), np.float32), (width, height),
                            interpolation=cv2.INTER_NEAREST)
        prepared.append(_Prepared(item, ponder, fixations))
    if not prepared:
        raise ValueError(f"no usable image with fixations under {root}")

    by_category: Dict[str, List[_Prepared]] = {}
    for p in prepared:
        by_category.setdefault(p.image.category, []).append(p)
    tuning = [p for items in by_category.values() for p in items[: len(items) // 2]]
    validation = {c: items[len(items) // 2:] for c, items in by_category.items()}
    if not tuning:
        raise ValueError("every category needs at least 2 usable images (first half tunes s and gamma)")
    baseline = center_baseline(height, width)  # every map is at ``size``
    best = (-1.0, None, None)
    for sigma in sigmas:
        blurred = [_normalised_blur(p.ponder, sigma) for p in tuning]  # the same for every gamma
        for gamma in gammas:
            auc = float(np.mean([_auc_at_fixation_size(b + gamma * baseline, p.fixations)
                                 for b, p in zip(blurred, tuning)]))
            if auc > best[0]:
                best = (auc, sigma, gamma)
    result.tuning_auc, result.sigma, result.gamma = best
    all_sact, all_center = [], []
    for category, items in validation.items():
        sact, center = [], []
        for p in items:
            s = _auc_at_fixation_size(postprocess(p.ponder, result.sigma, result.gamma), p.fixations)
            c = _auc_at_fixation_size(baseline, p.fixations)
            sact.append(s)
            center.append(c)
            result.images.append({"category": category, "stimulus": p.image.stimulus,
                                  "fixations": p.image.fixations, "auc_judd": s, "center_auc_judd": c})
        result.categories[category] = {"images": len(items), "auc_judd": float(np.mean(sact)),
                                       "center_auc_judd": float(np.mean(center))}
        all_sact += sact
        all_center += center
    result.overall = {"images": len(all_sact), "auc_judd": float(np.mean(all_sact)),
                      "center_auc_judd": float(np.mean(all_center))}
    return result


def saliency_figure(stimulus: str, fixations: str, ponder_fn: Callable[[np.ndarray], np.ndarray],
                    size: Tuple[int, int], sigma: float, gamma: float):
    """Fig. 11: the image, its fixations (blurred for display) and the
    post-processed ponder cost map, side by side (a matplotlib figure)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    width, height = size
    rgb = cv2.cvtColor(cv2.resize(cv2.imread(stimulus, cv2.IMREAD_COLOR), (width, height),
                                  interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    ponder = cv2.resize(np.asarray(ponder_fn(rgb), np.float32), (width, height), interpolation=cv2.INTER_NEAREST)
    points = cv2.resize(load_fixations(fixations).astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    human = cv2.GaussianBlur(points, (0, 0), max(width, height) / 40)
    fig = Figure(figsize=(3 * width / 100, height / 100 + 0.5), dpi=100)
    axes = fig.subplots(1, 3)
    for ax, picture, title in zip(axes, (rgb, human, postprocess(ponder, sigma, gamma)),
                                  ("image", "human fixations", f"ponder cost (s={sigma:g}, gamma={gamma:g})")):
        ax.imshow(picture, cmap=None if picture.ndim == 3 else "inferno")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
