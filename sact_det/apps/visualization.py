"""Where SACT spends its computation: ponder cost maps over images (Figs. 1, 8-10),
of a detector (its detections beside the map) or a classifier (its top-5
classes in the title: what the official ``imagenet_ponder_map.py`` draws).

Usable from Python (notebooks) and by ``tools/visualize_ponder.py``::

    predictor = SACTPredictor(cfg)                  # cfg.MODEL.WEIGHTS: a trained model
    vis = visualize(predictor, "image.jpg")         # or a BGR array (cv2.imread); maps at its resolution
    vis.figure(score_threshold=0.5).savefig("ponder.png")
    vis.blocks_figure().savefig("blocks.png")

Maps are nearest-neighbour resized from the feature grid (each cell keeps its
value, as in the official code) to the image resolution. Images larger than
``MAX_DISPLAY_SIDE`` pixels are shown (and their maps computed) scaled down to
it, and figures are at most ``MAX_FIGURE_SIZE`` pixels wide and high, so that
memory and file sizes stay bounded whatever the input size.
"""
import csv
import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import matplotlib
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer

from sact_det.data.images import IMAGE_EXTENSIONS, is_image_file, read_image_rgb
from sact_det.engine.predictor import SACTPredictor
from sact_det.modeling.report import SACTReport
from sact_det.utils.files import atomic_path

__all__ = ["PonderVisualization", "colorize", "visualize", "top_classes", "ponder_visualization", "expand_inputs",
           "unique_stem", "visualize_files"]

DEFAULT_CMAP = "inferno"
MAX_DISPLAY_SIDE = 1024  # pixels: longer side of the images and maps drawn
MAX_FIGURE_SIZE = 1600  # pixels: width and height of a figure (dpi 100)
logger = logging.getLogger("sact_det")


def colorize(value_map: np.ndarray, vmin: float, vmax: float, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """``uint8 [H, W, 3]``: values mapped linearly from [vmin, vmax] onto the colour map
    (its own table of ``N`` colours, looked up in uint8: no float RGBA copy of the map)."""
    colours = matplotlib.colormaps.get_cmap(cmap)
    table = (colours(np.arange(colours.N))[:, :3] * 255).round().astype(np.uint8)
    scale = np.clip((value_map - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return table[np.minimum((scale * colours.N).astype(np.int32), colours.N - 1)]


def _figsize(panels: int, height: int, width: int, extra_width: float, extra_height: float = 0.8):
    """Figure size in inches (dpi 100) for ``panels`` images of ``height`` x
    ``width`` pixels side by side plus ``extra_*`` inches of colour bars and
    titles, scaled down to at most ``MAX_FIGURE_SIZE`` pixels each way."""
    limit = MAX_FIGURE_SIZE / 100
    scale = min(1.0, (limit - extra_width) / (panels * width / 100), (limit - extra_height) / (height / 100))
    return panels * width * scale / 100 + extra_width, height * scale / 100 + extra_height


@dataclass
class PonderVisualization:
    """One image's detections and ponder cost maps, at the display resolution:
    the image's own, or scaled down to ``MAX_DISPLAY_SIDE`` (see :func:`visualize`)."""

    image: np.ndarray  # uint8 RGB [H, W, 3]
    instances: object  # detectron2 Instances, boxes in display coordinates; None for a classifier
    sact: SACTReport  # the model's per-image SACT report (FLOPs, ponder cost, units)
    ponder_map: np.ndarray  # float32 [H, W], total ponder cost (sum over blocks)
    block_maps: Dict[str, np.ndarray]  # float32 [H, W] per block
    metadata: object = None
    original_size: Optional[Tuple[int, int]] = None  # (height, width) of the input image; None: as displayed
    label_units: bool = False  # label detections with their proposal's box-head units (ACT head)
    top_classes: Optional[List[Tuple[str, float]]] = None  # a classifier's top-5 (class, probability)

    @property
    def is_classifier(self) -> bool:
        return self.instances is None

    @property
    def size(self) -> Tuple[int, int]:
        """(height, width) of the input image."""
        return self.original_size or tuple(self.image.shape[:2])

    def value_range(self, value_range: Optional[Tuple[float, float]] = None) -> Tuple[float, float]:
        if value_range is not None:
            return value_range
        return float(self.ponder_map.min()), float(self.ponder_map.max())

    def overlay(self, value_range=None, alpha: float = 0.6, cmap: str = DEFAULT_CMAP) -> np.ndarray:
        """``uint8 [H, W, 3]``: the heat map blended over the image."""
        vmin, vmax = self.value_range(value_range)
        return cv2.addWeighted(colorize(self.ponder_map, vmin, vmax, cmap), alpha, self.image, 1 - alpha, 0)

    def detections(self, score_threshold: float = 0.5) -> np.ndarray:
        """``uint8 [H, W, 3]``: the image with the detections above the threshold;
        with ``label_units``, each labelled with the units its proposal ran in an
        ACT box head (MODEL.SACT.HEAD_TYPE act)."""
        instances = self.instances[self.instances.scores >= score_threshold].to("cpu")
        visualizer = Visualizer(self.image, self.metadata)
        if not (self.label_units and instances.has("head_units")):
            return visualizer.draw_instance_predictions(instances).get_image()
        names = (self.metadata.get("thing_classes") if self.metadata is not None else None) or []
        labels = [f"{names[c] if c < len(names) else c} {s:.0%} | {u} units" for c, s, u in
                  zip(instances.pred_classes.tolist(), instances.scores.tolist(), instances.head_units.tolist())]
        return visualizer.overlay_instances(boxes=instances.pred_boxes, labels=labels).get_image()

    def figure(self, score_threshold: float = 0.5, value_range=None, cmap: str = DEFAULT_CMAP):
        """Fig. 1 / Fig. 10: detections beside the total ponder cost heat map with
        a colour bar and the map's min/max. ``value_range`` fixes the colour scale."""
        height, width = self.image.shape[:2]
        vmin, vmax = self.value_range(value_range)
        top = self.top_classes or []
        extra_height = 0.8 + 0.16 * len(top)  # a classifier's title lists its top classes
        fig = Figure(figsize=_figsize(2, height, width, 1.5, extra_height), dpi=100)
        left, right = fig.subplots(1, 2)
        if self.is_classifier:
            left.imshow(self.image)
            left.set_title("\n".join(f"{name}: {100 * p:.1f}%" for name, p in top), fontsize=9)
        else:
            left.imshow(self.detections(score_threshold))
            count = int((self.instances.scores >= score_threshold).sum())
            left.set_title(f"{count} detections (score >= {score_threshold:g})", fontsize=9)
        right.imshow(self.image)
        heat = right.imshow(self.ponder_map, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6,
                            interpolation="nearest")
        network = "classifier" if self.is_classifier else "feature extractor"
        right.set_title(f"ponder cost: min {self.ponder_map.min():.2f}, max {self.ponder_map.max():.2f}\n"
                        f"{network} FLOPs: {self.sact.flops_pct:.0f}% of dense", fontsize=9)
        fig.colorbar(heat, ax=right, fraction=0.046, pad=0.02).set_label("ponder cost")
        for ax in (left, right):
            ax.axis("off")
        fig.tight_layout()
        return fig

    def blocks_figure(self, value_range=None, cmap: str = DEFAULT_CMAP):
        """Fig. 8: the ponder cost map of each block, each with its own colour bar
        (or one fixed ``value_range`` for all)."""
        height, width = self.image.shape[:2]
        names = list(self.block_maps)
        fig = Figure(figsize=_figsize(len(names), height, width, 0.9 * len(names)), dpi=100)
        axes = fig.subplots(1, len(names), squeeze=False)
        for ax, name in zip(axes[0], names):
            block = self.block_maps[name]
            vmin, vmax = value_range or (float(block.min()), float(block.max()))
            heat = ax.imshow(block, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(f"{name}: {block.min():.2f} - {block.max():.2f}", fontsize=9)
            ax.axis("off")
            fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.02)
        fig.tight_layout()
        return fig


def visualize(predictor: SACTPredictor, image, max_side: Optional[int] = MAX_DISPLAY_SIDE) -> PonderVisualization:
    """Runs the model on an image and returns its maps, at the image's
    resolution, or scaled down so that its longer side is at most ``max_side``
    pixels (None: never). ``image``: a path (read as RGB, see
    :func:`~sact_det.data.images.read_image_rgb`) or, as the predictor takes
    it, a BGR ``uint8 [H, W, 3]`` array (``cv2.imread``)."""
    if isinstance(image, str):
        image_bgr = read_image_rgb(image)[:, :, ::-1]
    else:
        image_bgr = np.asarray(image)
    output = predictor.ponder_output(image_bgr)
    return ponder_visualization(np.ascontiguousarray(image_bgr[:, :, ::-1]), output, predictor.metadata, max_side)


def _scaled_instances(instances, size: Tuple[int, int], original: Tuple[int, int]):
    """Detections on an image of ``original`` size, moved onto the same image at ``size``."""
    scaled = Instances(size, **instances.get_fields())
    if scaled.has("pred_boxes"):
        scaled.pred_boxes = scaled.pred_boxes.clone()
        scaled.pred_boxes.scale(size[1] / original[1], size[0] / original[0])
    return scaled


def top_classes(scores, metadata=None, k: int = 5) -> List[Tuple[str, float]]:
    """A classifier's ``k`` most probable classes as (name, probability); names
    from the metadata's ``classes`` (the dataset's folders), else the indices."""
    names = (metadata.get("classes") if metadata is not None else None) or []
    probabilities, indices = scores.detach().float().cpu().topk(min(k, scores.numel()))
    return [(names[i] if i < len(names) else str(i), float(p)) for p, i in zip(probabilities, indices.tolist())]


def ponder_visualization(image_rgb: np.ndarray, output: dict, metadata=None,
                         max_side: Optional[int] = None) -> PonderVisualization:
    """A model output (``sact`` and a detector's ``instances`` or a classifier's
    ``scores``) on ``image_rgb`` as maps at the image's resolution, or scaled
    down so that its longer side is at most ``max_side`` pixels (None: never)."""
    report = output["sact"]
    original = tuple(image_rgb.shape[:2])
    instances = output["instances"].to("cpu") if "instances" in output else None
    scale = min(1.0, max_side / max(original)) if max_side else 1.0
    size = original
    if scale < 1:  # drawn smaller: the maps, the figures and the overlay stay bounded
        size = (max(1, round(original[0] * scale)), max(1, round(original[1] * scale)))
        image_rgb = cv2.resize(image_rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        if instances is not None:
            instances = _scaled_instances(instances, size, original)
    return PonderVisualization(
        image=image_rgb, instances=instances, sact=report, ponder_map=report.ponder_map_on_image(size),
        block_maps={name: report.ponder_map_on_image(size, name) for name in report.ponder_maps},
        metadata=metadata, original_size=original,
        top_classes=top_classes(output["scores"], metadata) if "scores" in output else None)


def expand_inputs(inputs) -> Tuple[list, list]:
    """Files, directories (their images, sorted) and glob patterns -> (paths, failures);
    an input that matches nothing is a failure ``(input, reason)``."""
    paths, failures = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if is_image_file(f))
            empty = (f"the directory holds no image files (expected {', '.join(IMAGE_EXTENSIONS)})"
                     if os.listdir(item) else "the directory is empty")
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            empty = "no such file, directory, or files matching the pattern"
        if found:
            paths.extend(found)
        else:
            failures.append((item, empty))
    return paths, failures


def unique_stem(path: str, used: set) -> str:
    """The file name of ``path`` without extension, with ``_2``, ``_3``, ... when
    an earlier input had the same name (in another directory); added to ``used``."""
    name = stem = os.path.splitext(os.path.basename(path))[0]
    index = 1
    while name in used:
        index += 1
        name = f"{stem}_{index}"
    used.add(name)
    return name


def _record(path: str, vis: Optional[PonderVisualization], score_threshold: float,
            error: str = "") -> dict:
    record = {"file": path, "status": "error" if error else "ok", "error": error}
    if vis is not None:
        report = vis.sact
        record.update(height=vis.size[0], width=vis.size[1])
        if vis.is_classifier:
            record.update(top5="; ".join(f"{name} {p:.3f}" for name, p in vis.top_classes))
        else:
            record.update(num_detections=int((vis.instances.scores >= score_threshold).sum()))
        record.update(ponder_cost=report.ponder_cost, flops=report.flops, flops_pct=report.flops_pct)
        record.update({f"ponder_cost_{k}": v for k, v in report.ponder_cost_per_block.items()})
        record.update({f"units_{k}": v for k, v in report.units_per_block.items()})
        if report.detector_flops is not None:
            record.update(detector_flops=report.detector_flops, detector_flops_pct=report.detector_flops_pct,
                          num_proposals=report.num_proposals, head_units=report.head_units)
    return record


def visualize_files(predictor: SACTPredictor, inputs, output_dir: str, score_threshold: float = 0.5,
                    value_range=None, progress: bool = True, label_units: bool = False):
    """Writes, for each input image, ``<name>_ponder.png`` (detections beside the
    ponder heat map), ``<name>_blocks.png`` (per-block maps) and
    ``<name>_overlay.png`` (heat map over the image, at the image's resolution
    up to ``MAX_DISPLAY_SIDE``), plus ``ponder_summary.csv`` / ``.json`` with
    one row per image. Every file is written whole or not at all.

    An image that cannot be read is reported (logged, and a row with status
    "error") and skipped. Returns (records, failures).
    """
    os.makedirs(output_dir, exist_ok=True)
    paths, failures = expand_inputs(inputs)
    records = [_record(item, None, score_threshold, reason) for item, reason in failures]
    used_names = set()
    for path in tqdm(paths, desc="ponder maps", unit="image", disable=not progress):
        try:
            image = read_image_rgb(path)
        except Exception as e:  # any decoder error: report the file, go on with the others
            reason = f"cannot read image: {type(e).__name__}: {e}"
            logger.error(f"{path}: {reason}; skipped")
            failures.append((path, reason))
            records.append(_record(path, None, score_threshold, reason))
            continue
        vis = visualize(predictor, image[:, :, ::-1])  # the predictor takes BGR, as Detectron2's
        vis.label_units = label_units
        name = unique_stem(path, used_names)
        for suffix, fig in (("ponder", vis.figure(score_threshold, value_range)),
                            ("blocks", vis.blocks_figure(value_range))):
            with atomic_path(os.path.join(output_dir, f"{name}_{suffix}.png")) as temporary:
                fig.savefig(temporary)
        with atomic_path(os.path.join(output_dir, f"{name}_overlay.png")) as temporary:
            Image.fromarray(vis.overlay(value_range)).save(temporary)
        records.append(_record(path, vis, score_threshold))
    columns = list(dict.fromkeys(k for r in records for k in r))
    with atomic_path(os.path.join(output_dir, "ponder_summary.csv")) as temporary, \
            open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    with atomic_path(os.path.join(output_dir, "ponder_summary.json")) as temporary, open(temporary, "w") as f:
        json.dump(records, f, indent=1)
    return records, failures
