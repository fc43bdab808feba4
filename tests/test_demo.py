"""Detectron2's inference demo (tools/demo.py, sact_det.apps.demo) and the
training demo under its own name (tools/train_demo.py, `make demo`) (issue 24, item 4)."""
import csv
import os
import re

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, config_path, load_tool, tiny_cfg
from PIL import Image

from sact_det.apps import demo
from sact_det.engine.predictor import SACTPredictor

CONFIG = config_path("synthetic/sact_tiny.yaml")


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return SACTPredictor(tiny_cfg("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
                                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"))


@pytest.fixture
def tool(predictor, monkeypatch):
    """tools/demo.py with the module's predictor (built once)."""
    module = load_tool("demo")
    built = []
    monkeypatch.setattr(module, "SACTPredictor", lambda cfg: built.append(cfg) or predictor)
    module.built = built
    return module


def frames(count, height=72, width=96):
    rng = np.random.RandomState(0)
    return [rng.randint(0, 255, (height, width, 3)).astype(np.uint8) for _ in range(count)]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for index, frame in enumerate(frames(3)):
        cv2.imwrite(str(folder / f"img{index}.jpg"), frame)
    cv2.imwrite(str(folder / "more" / "img0.png"), frames(1)[0])  # same name, other folder
    cv2.imwrite(str(folder / "gray.bmp"), frames(1)[0][:, :, 0])  # a format figures cannot be written in
    return folder


class FakeCamera:
    """``cv2.VideoCapture(0)`` of a machine with a camera: ``count`` frames,
    then the user's Ctrl-C (a camera never ends by itself)."""

    opened = []

    def __init__(self, source):
        FakeCamera.opened.append(source)
        self.frames = frames(3)

    def isOpened(self):
        return True

    def read(self):
        if not self.frames:
            raise KeyboardInterrupt
        return True, self.frames.pop(0)

    def get(self, prop):
        return 0.0  # cameras often do not report a frame rate

    def release(self):
        pass


def test_images_files_globs_and_folders_each_drawn_beside_the_ponder_map(tool, images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--config-file", CONFIG, "--input", str(images / "img0.jpg"), str(images / "img[12].jpg"),
            str(images / "more"), str(images / "gray.bmp"), "--output", str(out), "--confidence-threshold", "0.3",
            "MODEL.DEVICE", "cpu"]
    assert tool.main(argv) == 0
    assert "5 image(s) written" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["gray.png", "img0.jpg", "img0_2.png", "img1.jpg", "img2.jpg"]
    figure = np.asarray(Image.open(out / "img1.jpg").convert("RGB"))
    assert figure.shape[1] > 1.8 * figure.shape[0]  # the detections and the ponder map side by side
    # --confidence-threshold is also the model's own score threshold (Detectron2's demo).
    assert tool.built[0].MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3


def test_one_image_to_a_file_and_the_errors(tool, images, tmp_path, capsys):
    target = tmp_path / "figure.png"
    assert tool.main(["--config-file", CONFIG, "--input", str(images / "img0.jpg"), "--output", str(target)]) == 0
    assert Image.open(target).format == "PNG"
    # Several images into one file: an error naming both, before any image is drawn.
    assert tool.main(["--config-file", CONFIG, "--input", str(images / "img*.jpg"),
                      "--output", str(tmp_path / "two.png")]) == 2
    assert "a file takes one image, the inputs are 3 images" in capsys.readouterr().err
    assert not (tmp_path / "two.png").exists()
    # An unreadable image is reported and skipped; the others are written; status 1.
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    assert tool.main(["--config-file", CONFIG, "--input", str(images / "broken.jpg"), str(images / "img0.jpg"),
                      "--output", str(tmp_path / "some")]) == 1
    assert "FAILED" in capsys.readouterr().err and os.listdir(tmp_path / "some") == ["img0.jpg"]


@pytest.mark.parametrize("argv, expected", [
    ([], "expected one of --input, --video-input or --webcam (the training demo of `make demo` is "
         "tools/train_demo.py)"),
    (["--input", "x.jpg"], "argument --output: required here: this OpenCV cannot open windows"),
    (["--webcam", "--output", "x.png"], "argument --output: expected a directory for --video-input and --webcam"),
    (["--input", "a.jpg", "--webcam", "--output", "o"], "argument --webcam: not allowed with argument --input"),
])
def test_argument_errors(tool, argv, expected, capsys, monkeypatch):
    monkeypatch.setattr(tool, "opencv_has_gui", lambda: False)  # as opencv-python-headless
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--config-file", CONFIG, *argv])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err
    assert tool.built == []  # nothing was built


def test_video_input(tool, tmp_path, capsys):
    clip = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 72))
    for frame in frames(2):
        writer.write(frame)
    writer.release()
    assert tool.main(["--config-file", CONFIG, "--video-input", clip, "--output", str(tmp_path / "out")]) == 0
    assert "2 frames written" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["clip_ponder.csv", "clip_ponder.mp4"]


def test_webcam_records_until_ctrl_c_and_keeps_the_frames(tool, tmp_path, monkeypatch, capsys):
    FakeCamera.opened.clear()
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    out = tmp_path / "out"
    assert tool.main(["--config-file", CONFIG, "--webcam", "--output", str(out), "--opts", "MODEL.DEVICE", "cpu"]) == 0
    assert FakeCamera.opened == [0]  # camera 0, as Detectron2's demo opens it
    assert "3 frames written" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["webcam_ponder.csv", "webcam_ponder.mp4"]
    rows = list(csv.DictReader(open(out / "webcam_ponder.csv")))
    assert [int(r["frame"]) for r in rows] == [0, 1, 2] and float(rows[1]["time_s"]) == pytest.approx(1 / 25)


def test_no_camera_is_one_line(tool, tmp_path, monkeypatch, capsys):
    class NoCamera(FakeCamera):
        def isOpened(self):
            return False
    monkeypatch.setattr(cv2, "VideoCapture", NoCamera)
    assert tool.main(["--config-file", CONFIG, "--webcam", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith("--webcam: expected a video OpenCV can read, cannot open camera 0")


def test_windows_without_output_when_opencv_has_a_gui(tool, images, monkeypatch, capsys):
    shown = []
    monkeypatch.setattr(tool, "opencv_has_gui", lambda: True)
    monkeypatch.setattr(cv2, "namedWindow", lambda *args: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, image: shown.append(image.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: 27 if len(shown) == 2 else -1)  # Esc at the second image
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    assert tool.main(["--config-file", CONFIG, "--input", str(images / "img*.jpg")]) == 0
    assert len(shown) == 2 and shown[0][2] == 3 and shown[0][1] > shown[0][0]  # BGR, side by side
    FakeCamera.opened.clear()
    shown.clear()
    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    monkeypatch.setattr(cv2, "waitKey", lambda ms: -1)
    assert tool.main(["--config-file", CONFIG, "--webcam"]) == 0  # until Ctrl-C
    assert len(shown) == 3 and shown[0] == (72, 96, 3)


def test_opencv_gui_is_read_from_its_build(monkeypatch):
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:                           NONE\n")
    assert not demo.opencv_has_gui()
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:                           GTK3\n")
    assert demo.opencv_has_gui()


def test_the_training_demo_keeps_its_name_and_make_target(capsys):
    make = open(os.path.join(REPO, "Makefile")).read()
    target = re.search(r"^demo:.*\n\t\$\(PY\) (tools/\S+\.py)", make, re.M).group(1)
    assert target == "tools/train_demo.py" and os.path.isfile(os.path.join(REPO, target))
    train_demo = load_tool("train_demo")
    # Its overrides are checked before the dataset and the training (KEY VALUE, as every tool).
    with pytest.raises(SystemExit):
        train_demo.main(["--output-dir", "unused", "SOLVER.MAX_ITERR", "3"])
    assert "unknown config key SOLVER.MAX_ITERR" in capsys.readouterr().err


def test_training_demo_summary_prints_the_per_block_lines_it_has():
    """The summary's units, border-ratio and units-on-objects lines take res2..resN from the units_resN keys
    only (not from units_on_objects_resN), and an evaluation without a SACT report still gets its AP line."""
    from sact_det.apps.train_demo import dataset_summary

    sact = {"FLOPs": 1e9, "FLOPs_pct": 50.0, "FLOPs_pct_std": 2.0, "ponder_cost": 6.0, "units_res2": 1.5,
            "units_res3": 2.5, "border_ratio_res2": 0.99, "border_ratio_res3": 1.01, "units_on_objects_res2": 2.0,
            "units_on_objects_res3": 3.0, "units_on_background_res2": 1.0, "units_on_background_res3": 1.25,
            "object_AUC": 0.9, "object_AUC_res2": 0.8}
    lines = dataset_summary("val", {"bbox": {"AP": 15.8, "AP50": 26.0}, "sact": sact}, "out").splitlines()
    assert lines[0] == "val: box AP 15.8  AP50 26.0 (COCO protocol)"
    assert "  units per block res2 1.50, res3 2.50" in lines
    assert "  border ratio (ponder cost on the outermost ring of cells / the interior) res2 0.99, res3 1.01" in lines
    assert "  units on objects / on background res2 2.00 / 1.00, res3 3.00 / 1.25" in lines
    assert lines[-1] == f"  report: {os.path.join('out', 'inference', 'val', 'sact_report.json')}"
    bare = dataset_summary("val", {"bbox": {"AP": 1.0, "AP50": 2.0}}, "out").splitlines()
    assert bare[0] == "val: box AP 1.0  AP50 2.0 (COCO protocol)"
    assert not any(line.startswith(("  border ratio", "  units on objects")) for line in bare)
