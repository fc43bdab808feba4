"""Detectron2's inference demo (``demo/demo.py``) for SACT detectors: ``tools/demo.py``.

* Images (files, directories, glob patterns): each drawn as its detections
  beside the ponder cost heat map, with the feature extractor's FLOPs
  (:meth:`~sact_det.apps.visualization.PonderVisualization.figure`), written to
  ``output`` (a directory: one file per image, named after it; or a file
  name for a single image) or shown in a window.
* A video (``video_input``) or the camera (``webcam``: ``cv2.VideoCapture(0)``):
  every frame with its detections over the ponder heat map, FLOPs and ponder
  cost in a corner (:func:`~sact_det.apps.video.video_frame`), written to
  ``output`` as ``<name>_ponder.mp4`` with a per-frame CSV
  (:func:`~sact_det.apps.video.record_video`), or shown in a window. The camera
  runs until Ctrl-C (or Esc in the window); the frames recorded until then are kept.

Windows need an OpenCV with GUI support (opencv-python; the headless build
that sact-det installs has none: give ``output``).
"""
import logging
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from tqdm import tqdm

from sact_det.apps.video import capture_fps, open_capture, ponder_frames, record_video
from sact_det.apps.visualization import expand_inputs, unique_stem, visualize
from sact_det.data.images import read_image_rgb
from sact_det.engine.predictor import SACTPredictor
from sact_det.utils.errors import InputValueError
from sact_det.utils.files import atomic_path

__all__ = ["FIGURE_EXTENSIONS", "WEBCAM", "opencv_has_gui", "output_is_file", "demo_images", "demo_video",
           "run_demo"]

logger = logging.getLogger("sact_det")

# What the figures can be written as (matplotlib); other image inputs give .png.
FIGURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".pdf", ".svg")
WEBCAM = 0  # the camera cv2.VideoCapture opens, as in Detectron2's demo
WINDOW = "sact-det demo"
ESC = 27


def opencv_has_gui() -> bool:
    """Whether this OpenCV can open windows (``GUI:`` of its build information;
    opencv-python-headless says NONE)."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "GUI":
            return value.strip().upper() not in ("", "NONE", "NO")
    return False


def output_is_file(output: str) -> bool:
    """An ``output`` that names a figure file (by extension) rather than a directory."""
    return output.lower().endswith(FIGURE_EXTENSIONS) and not os.path.isdir(output)


def _figure_bgr(fig) -> np.ndarray:
    """A matplotlib figure as a BGR ``uint8`` image, for ``cv2.imshow``."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:, :, 2::-1])


def _show(image_bgr: np.ndarray, wait_ms: int) -> bool:
    """Shows the image in the demo's window; False when the user pressed Esc."""
    cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    cv2.imshow(WINDOW, image_bgr)
    return cv2.waitKey(wait_ms) != ESC


def _figure_path(output: str, path: str, used: set) -> str:
    if output_is_file(output):
        return output
    ext = os.path.splitext(path)[1].lower()
    return os.path.join(output, unique_stem(path, used) + (ext if ext in FIGURE_EXTENSIONS else ".png"))


def demo_images(predictor: SACTPredictor, inputs: Sequence[str], output: Optional[str] = None,
                confidence_threshold: float = 0.5) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Each image of ``inputs`` (files, directories, glob patterns) drawn as its
    detections (score >= ``confidence_threshold``) beside its ponder cost map,
    written under ``output`` or, without it, shown in a window (Esc stops).
    An unreadable image is reported and skipped. Returns (written files,
    failures as (input, reason))."""
    paths, failures = expand_inputs(inputs)
    if output is not None and output_is_file(output) and len(paths) != 1:
        raise InputValueError(f"--output {output}: a file takes one image, the inputs are {len(paths)} images; "
                              "give a directory")
    written, used = [], set()
    for path in paths:
        try:
            image = read_image_rgb(path)
        except Exception as e:  # any decoder error: report the file, go on with the others
            failures.append((path, f"cannot read image: {type(e).__name__}: {e}"))
            logger.error(f"{path}: {failures[-1][1]}; skipped")
            continue
        start = time.perf_counter()
        vis = visualize(predictor, image[:, :, ::-1])  # the predictor takes BGR, as Detectron2's
        count = int((vis.instances.scores >= confidence_threshold).sum())
        logger.info(f"{path}: {count} detections in {time.perf_counter() - start:.2f}s; feature extractor "
                    f"FLOPs {vis.sact.flops_pct:.0f}% of dense, ponder cost {vis.sact.ponder_cost:.2f}")
        fig = vis.figure(confidence_threshold)
        if output is None:
            if not _show(_figure_bgr(fig), 0):
                break
            continue
        target = _figure_path(output, path, used)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with atomic_path(target) as temporary:
            fig.savefig(temporary)
        written.append(target)
    return written, failures


def demo_video(predictor: SACTPredictor, source, output: Optional[str] = None, confidence_threshold: float = 0.5,
               progress: bool = True) -> Optional[Tuple[str, str, int]]:
    """A video file (``source``: its path) or the camera (``source``: :data:`WEBCAM`),
    every frame drawn with its detections over its ponder heat map: written to
    ``output/<name>_ponder.mp4`` and ``.csv`` (name: the video's, or ``webcam``),
    returning (video, CSV, frames); or, without ``output``, shown in a window
    (Esc stops), returning None. The camera runs until Ctrl-C or Esc."""
    camera = not isinstance(source, str)
    capture = open_capture(source, "--webcam" if camera else "--video-input")
    try:
        total = None if camera else int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        frames = tqdm(ponder_frames(predictor, capture, confidence_threshold), total=total, desc="frames",
                      unit="frame", disable=not progress)
        name = "webcam" if camera else os.path.splitext(os.path.basename(source))[0]
        if output is None:
            try:
                for _, frame in frames:
                    if not _show(frame, 1):
                        break
            except KeyboardInterrupt:
                if not camera:
                    raise
            return None
        os.makedirs(output, exist_ok=True)
        return record_video(frames, os.path.join(output, name + "_ponder"), capture_fps(capture),
                            confidence_threshold, until_interrupted=camera,
                            source="--webcam" if camera else f"--video-input {source!r}")
    finally:
        capture.release()
        if output is None:
            cv2.destroyAllWindows()


def run_demo(predictor: SACTPredictor, inputs: Optional[Sequence[str]] = None,
             video_input: Optional[str] = None, webcam: bool = False, output: Optional[str] = None,
             confidence_threshold: float = 0.5) -> int:
    """``tools/demo.py``: one of ``inputs``, ``video_input`` or ``webcam``
    (:func:`demo_images`, :func:`demo_video`); prints what was written. Returns
    the exit status: 1 if an input image failed, else 0."""
    if inputs:
        written, failures = demo_images(predictor, inputs, output, confidence_threshold)
        if output is not None:
            print(f"{len(written)} image(s) written to {output}; {len(failures)} failed")
        for path, reason in failures:
            print(f"  FAILED {path}: {reason}", file=sys.stderr)
        return 1 if failures else 0
    result = demo_video(predictor, WEBCAM if webcam else video_input, output, confidence_threshold)
    if result is not None:
        video, table, count = result
        print(f"{count} frames written to {video}; per-frame FLOPs and ponder cost in {table}")
    return 0
