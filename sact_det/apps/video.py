"""Ponder cost over a video or a camera: every frame with its detections and
ponder overlay, and a per-frame CSV of FLOPs and ponder cost
(``tools/visualize_ponder.py --video-input``, ``tools/demo.py --video-input / --webcam``).

Frames are read and written with OpenCV (``mp4v`` in ``.mp4``, which
opencv-python-headless writes; ``MJPG`` in ``.avi`` where it cannot). The
colour scale is fixed for the whole video (``value_range``, or the first
frame's min/max), so that colours can be compared from frame to frame.
"""
import csv
import os
from typing import Iterable, Iterator, Optional, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from detectron2.utils.visualizer import Visualizer

from sact_det.apps.visualization import PonderVisualization, ponder_visualization
from sact_det.engine.predictor import SACTPredictor
from sact_det.utils.files import atomic_path, partial_name

__all__ = ["VIDEO_FORMATS", "video_frame", "open_capture", "ponder_frames", "record_video", "visualize_video"]

# (fourcc, extension), in order of preference.
VIDEO_FORMATS = (("mp4v", ".mp4"), ("MJPG", ".avi"))


def video_frame(vis: PonderVisualization, score_threshold: float,
                value_range: Tuple[float, float]) -> np.ndarray:
    """BGR ``uint8 [H, W, 3]``: the ponder heat map over the frame, the
    detections drawn on it, and the frame's FLOPs and ponder cost written in a corner."""
    instances = vis.instances[vis.instances.scores >= score_threshold]
    drawn = Visualizer(vis.overlay(value_range), vis.metadata).draw_instance_predictions(instances).get_image()
    frame = np.ascontiguousarray(drawn[:, :, ::-1])
    text = f"FLOPs {vis.sact.flops_pct:.0f}% of dense  ponder {vis.sact.ponder_cost:.2f}"
    scale = max(vis.image.shape[1] / 800, 0.35)
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined, readable anywhere
        cv2.putText(frame, text, (5, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour,
                    thickness, cv2.LINE_AA)
    return frame


def open_capture(source: Union[str, int], option: str = "--video-input"):
    """``cv2.VideoCapture`` of a video file or a camera index; ``option``
    names the argument in the error when it cannot be opened."""
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        what = f"camera {source}" if isinstance(source, int) else repr(source)
        raise ValueError(f"{option}: expected a video OpenCV can read, cannot open {what}")
    return capture


def capture_fps(capture) -> float:
    """The capture's frame rate, 25 when it does not say."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    return fps if fps and np.isfinite(fps) and fps > 0 else 25.0


def ponder_frames(predictor: SACTPredictor, capture, score_threshold: float = 0.5,
                  value_range: Optional[Tuple[float, float]] = None
                  ) -> Iterator[Tuple[PonderVisualization, np.ndarray]]:
    """(visualisation, drawn BGR frame of :func:`video_frame`) for each frame
    of ``capture`` until it ends; one colour scale for all (``value_range``, or
    the first frame's)."""
    while True:
        ok, bgr = capture.read()
        if not ok:
            return
        vis = ponder_visualization(bgr[:, :, ::-1], predictor.ponder_output(bgr), predictor.metadata)
        value_range = value_range or vis.value_range()
        yield vis, video_frame(vis, score_threshold, value_range)


def _open_writer(stem: str, fps: float, size: Tuple[int, int]):
    """(writer, temporary path, final path) of the first format OpenCV can write."""
    for fourcc, ext in VIDEO_FORMATS:
        final = stem + ext
        temporary = partial_name(final)
        writer = cv2.VideoWriter(temporary, cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, temporary, final
        writer.release()
        if os.path.exists(temporary):
            os.remove(temporary)
    raise RuntimeError(f"OpenCV can write none of the video formats {VIDEO_FORMATS} here")


def _row(index: int, fps: float, vis: PonderVisualization, score_threshold: float) -> dict:
    report = vis.sact
    row = {"frame": index, "time_s": round(index / fps, 4), "flops": report.flops,
           "flops_pct": round(report.flops_pct, 3), "ponder_cost": round(report.ponder_cost, 4),
           "detections": int((vis.instances.scores >= score_threshold).sum())}
    row.update({f"ponder_cost_{k}": round(v, 4) for k, v in report.ponder_cost_per_block.items()})
    return row


def record_video(frames: Iterable[Tuple[PonderVisualization, np.ndarray]], stem: str, fps: float,
                 score_threshold: float = 0.5, until_interrupted: bool = False, source: str = "the video"):
    """Writes the frames of :func:`ponder_frames` to ``<stem>.mp4`` (or ``.avi``)
    and one row per frame to ``<stem>.csv``; returns (video path, CSV path,
    number of frames). No frame at all is an error naming ``source``.

    Both files appear only once every frame is done: an error or an
    interruption leaves neither (nor a partial one), unless
    ``until_interrupted`` (a camera, which runs until Ctrl-C): then Ctrl-C
    ends the recording and the frames so far are kept.
    """
    writer, temporary, final, count = None, None, None, 0
    try:
        with atomic_path(stem + ".csv") as csv_temporary, open(csv_temporary, "w", newline="") as f:
            table = None
            try:
                for index, (vis, frame) in enumerate(frames):
                    if writer is None:
                        writer, temporary, final = _open_writer(stem, fps, (frame.shape[1], frame.shape[0]))
                    writer.write(frame)
                    row = _row(index, fps, vis, score_threshold)
                    if table is None:
                        table = csv.DictWriter(f, fieldnames=list(row))
                        table.writeheader()
                    table.writerow(row)
                    count += 1
            except KeyboardInterrupt:
                if not until_interrupted:
                    raise
            if count == 0:
                raise ValueError(f"{source}: no frame could be read")
            writer.release()
            os.replace(temporary, final)
    finally:
        if writer is not None:
            writer.release()
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
    return final, stem + ".csv", count


def visualize_video(predictor: SACTPredictor, video_path: str, output_dir: str, score_threshold: float = 0.5,
                    value_range: Optional[Tuple[float, float]] = None, progress: bool = True):
    """Writes ``<name>_ponder.mp4`` (or ``.avi``) and ``<name>_ponder.csv`` in
    ``output_dir`` (:func:`record_video`); returns (video path, CSV path, number of frames)."""
    capture = open_capture(video_path)
    try:
        # The frame count of a container can be wrong: it only sizes the bar.
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        frames = tqdm(ponder_frames(predictor, capture, score_threshold, value_range), total=total,
                      desc="frames", unit="frame", disable=not progress)
        os.makedirs(output_dir, exist_ok=True)
        stem = os.path.join(output_dir, os.path.splitext(os.path.basename(video_path))[0] + "_ponder")
        return record_video(frames, stem, capture_fps(capture), score_threshold,
                            source=f"--video-input {video_path!r}")
    finally:
        capture.release()
