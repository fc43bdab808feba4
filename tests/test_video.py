"""Ponder cost over a video (tools/visualize_ponder.py --video-input)."""
import csv
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import config_path, load_tool, tiny_cfg

from sact_det.engine.predictor import SACTPredictor

CONFIG = config_path("synthetic/sact_tiny.yaml")


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return SACTPredictor(tiny_cfg("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"))


@pytest.fixture
def clip(tmp_path):
    """Three 72x96 frames of a square moving over noise, as a camera would give them."""
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 72))
    rng = np.random.RandomState(0)
    for index in range(3):
        frame = rng.randint(60, 120, (72, 96, 3)).astype(np.uint8)
        frame[20:50, 10 + 20 * index: 40 + 20 * index] = (30, 200, 240)
        writer.write(frame)
    writer.release()
    return path


def read_frames(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_every_frame_is_written_with_its_row(predictor, clip, tmp_path, monkeypatch, capsys):
    tool = load_tool("visualize_ponder")
    monkeypatch.setattr(tool, "SACTPredictor", lambda cfg: predictor)
    out = tmp_path / "out"
    assert tool.main(["--config-file", CONFIG, "--video-input", clip, "--output", str(out),
                      "--opts", "MODEL.DEVICE", "cpu"]) == 0
    assert "3 frames written" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["clip_ponder.csv", "clip_ponder.mp4"]
    frames = read_frames(str(out / "clip_ponder.mp4"))
    assert len(frames) == 3 and frames[0].shape == (72, 96, 3)
    originals = read_frames(clip)
    assert np.abs(frames[0].astype(int) - originals[0].astype(int)).mean() > 10  # the overlay is there
    rows = list(csv.DictReader(open(out / "clip_ponder.csv")))
    assert [int(r["frame"]) for r in rows] == [0, 1, 2]
    # Each row is the model's own report on that frame (the predictor takes the BGR frame).
    direct = predictor(originals[2])["sact"]
    assert int(rows[2]["flops"]) == direct.flops
    assert float(rows[2]["ponder_cost"]) == pytest.approx(direct.ponder_cost, abs=1e-4)
    assert float(rows[2]["flops_pct"]) == pytest.approx(direct.flops_pct, abs=1e-3)
    assert {"detections", "ponder_cost_res4", "time_s"} <= set(rows[0])


def test_unreadable_video_leaves_nothing(predictor, tmp_path, monkeypatch, capsys):
    tool = load_tool("visualize_ponder")
    monkeypatch.setattr(tool, "SACTPredictor", lambda cfg: predictor)
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    out = tmp_path / "out"
    assert tool.main(["--config-file", CONFIG, "--video-input", str(fake), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--video-input" in err and "fake.mp4" in err and len(err.splitlines()) == 1
    assert not out.exists() or os.listdir(out) == []
    with pytest.raises(SystemExit):
        tool.main(["--config-file", CONFIG, "--video-input", str(tmp_path / "absent.mp4"), "--output", str(out)])
    assert "argument --video-input: expected an existing file" in capsys.readouterr().err


def test_failure_midway_leaves_no_partial_files(predictor, clip, tmp_path, monkeypatch):
    from sact_det.apps import video

    calls, original = [], predictor.ponder_output

    def failing(image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops it at the third frame
        return original(image)

    monkeypatch.setattr(predictor, "ponder_output", failing)
    with pytest.raises(KeyboardInterrupt):
        video.visualize_video(predictor, clip, str(tmp_path / "out"), progress=False)
    assert len(calls) == 3 and os.listdir(tmp_path / "out") == []
