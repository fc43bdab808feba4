"""Prediction as in Detectron2: BGR images in, INPUT.FORMAT respected, and
Detectron2's own DefaultPredictor working with SACT configs."""
import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_cfg

from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from sact_det.apps.visualization import visualize
from sact_det.engine.predictor import SACTPredictor
from sact_det.modeling.report import SACTReport


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded random tiny SACT model saved as a checkpoint, so that two
    predictors load the same weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(tiny_cfg()).state_dict()}, path)
    return str(path)


def bgr_image(seed=0, height=100, width=140):
    image = np.random.RandomState(seed).randint(0, 255, (height, width, 3)).astype(np.uint8)
    image[:, : width // 2, 0] = 255  # a blue left half: channel order matters
    return image


@pytest.mark.parametrize("input_format", ["BGR", "RGB"])
def test_predictor_takes_bgr_and_feeds_the_model_its_format(weights, input_format, monkeypatch):
    predictor = SACTPredictor(tiny_cfg("MODEL.WEIGHTS", weights, "INPUT.FORMAT", input_format,
                                       "INPUT.MIN_SIZE_TEST", "100", "INPUT.MAX_SIZE_TEST", "140"))
    seen = []
    forward = predictor.model.forward
    monkeypatch.setattr(predictor.model, "forward", lambda inputs: seen.append(inputs) or forward(inputs))
    image = bgr_image()
    output = predictor(image)
    fed = seen[0][0]["image"].numpy().transpose(1, 2, 0)
    expected = image if input_format == "BGR" else image[:, :, ::-1]
    assert np.array_equal(fed, expected)  # no resizing at the test size: the pixels themselves
    assert (seen[0][0]["height"], seen[0][0]["width"]) == (100, 140)
    assert isinstance(output["sact"], SACTReport) and len(output["instances"]) >= 0


def test_detectron2_default_predictor_runs_sact_configs(weights):
    cfg = tiny_cfg("MODEL.WEIGHTS", weights)
    ours, theirs = SACTPredictor(cfg), DefaultPredictor(cfg)
    assert type(theirs.model).__name__ == "SACTRCNN"
    image = bgr_image(1)
    a, b = ours(image), theirs(image)
    assert isinstance(b["sact"], SACTReport) and b["sact"].adaptive
    assert b["instances"].image_size == (100, 140)
    assert a["sact"].ponder_cost == pytest.approx(b["sact"].ponder_cost)
    assert a["sact"].flops == b["sact"].flops
    torch.testing.assert_close(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
    torch.testing.assert_close(a["instances"].scores, b["instances"].scores)


def test_visualize_takes_paths_and_bgr_arrays_and_shows_rgb(weights, tmp_path):
    predictor = SACTPredictor(tiny_cfg("MODEL.WEIGHTS", weights))
    image = bgr_image(2)
    cv2.imwrite(str(tmp_path / "image.png"), image)
    from_path = visualize(predictor, str(tmp_path / "image.png"))
    from_array = visualize(predictor, image)
    assert np.array_equal(from_path.image, image[:, :, ::-1])  # figures show RGB
    assert np.array_equal(from_array.image, from_path.image)
    assert np.array_equal(from_array.ponder_map, from_path.ponder_map)


def test_bad_images_and_formats_are_named(weights):
    with pytest.raises(ValueError, match="INPUT.FORMAT must be BGR or RGB"):
        SACTPredictor(tiny_cfg("INPUT.FORMAT", "L"))
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        SACTPredictor(tiny_cfg("MODEL.WEIGHTS", weights))(np.zeros((20, 30), np.uint8))
