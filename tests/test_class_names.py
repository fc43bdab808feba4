"""Class names reach the Python API (SACTPredictor, visualize) for datasets given
by DATASETS.COCO_JSON through get_sact_cfg or registered with
register_coco_instances (issue 24, item 1); a class count that differs from
the dataset's is an error before the model is built (item 3, the predictor's part)."""
import json
import re

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.utils.visualizer import Visualizer

from sact_det.apps.visualization import visualize
from sact_det.engine.predictor import SACTPredictor
from sact_det.utils.errors import InputValueError

FRUIT = ["apple", "banana", "cherry"]


@pytest.fixture
def fruit(tmp_path):
    """A COCO-format dataset with named classes (ids not starting at 1, listed
    out of order: the names go by id, as Detectron2's loader sets them)."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (90, 120, 3), np.uint8)).save(images / "a.jpg")
    categories = [{"id": 12, "name": "cherry"}, {"id": 5, "name": "apple"}, {"id": 7, "name": "banana"}]
    annotation = {"images": [{"id": 1, "file_name": "a.jpg", "height": 90, "width": 120}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 30],
                                   "area": 1200, "iscrowd": 0}],
                  "categories": categories}
    json_file = tmp_path / "fruit.json"
    json_file.write_text(json.dumps(annotation))
    yield str(json_file), str(images)
    for name in ("fruit_cfg", "fruit_registered"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def drawn_labels(predictor, monkeypatch):
    """The texts that ``visualize(predictor, image).detections()`` draws."""
    texts = []
    draw_text = Visualizer.draw_text
    monkeypatch.setattr(Visualizer, "draw_text", lambda self, text, *a, **k: texts.append(text)
                        or draw_text(self, text, *a, **k))
    vis = visualize(predictor, np.random.RandomState(1).randint(0, 255, (90, 120, 3), np.uint8))
    vis.detections(score_threshold=0.0)
    return texts


def fruit_predictor(*opts):
    torch.manual_seed(0)
    return SACTPredictor(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                  *opts))


def test_coco_json_of_get_sact_cfg_names_the_detections(fruit, monkeypatch):
    json_file, image_root = fruit
    predictor = fruit_predictor("DATASETS.COCO_JSON", str((("fruit_cfg", json_file, image_root),)),
                                "DATASETS.TEST", '("fruit_cfg",)')
    assert predictor.metadata.thing_classes == FRUIT
    labels = drawn_labels(predictor, monkeypatch)
    assert labels and all(re.match(r"(apple|banana|cherry) \d+%", t) for t in labels), labels[:5]


def test_register_coco_instances_without_metadata_names_the_detections(fruit, monkeypatch):
    json_file, image_root = fruit
    register_coco_instances("fruit_registered", {}, json_file, image_root)
    assert MetadataCatalog.get("fruit_registered").get("thing_classes") is None  # Detectron2 sets them at load
    predictor = fruit_predictor("DATASETS.TEST", '("fruit_registered",)')
    assert predictor.metadata.thing_classes == FRUIT
    labels = drawn_labels(predictor, monkeypatch)
    assert labels and all(t.split()[0] in FRUIT for t in labels)
    # The names are those Detectron2 sets when it loads the dataset (metadata cannot change once set).
    DatasetCatalog.get("fruit_registered")
    assert MetadataCatalog.get("fruit_registered").thing_classes == FRUIT


def test_no_test_set_takes_the_training_set(fruit):
    json_file, image_root = fruit
    predictor = fruit_predictor("DATASETS.COCO_JSON", str((("fruit_cfg", json_file, image_root),)),
                                "DATASETS.TEST", "()", "DATASETS.TRAIN", '("fruit_cfg",)')
    assert predictor.metadata.thing_classes == FRUIT


def test_a_class_count_other_than_the_datasets_fails_before_the_model_is_built(fruit, monkeypatch):
    json_file, image_root = fruit
    import sact_det.engine.predictor as module
    monkeypatch.setattr(module, "build_inference_model", lambda cfg: pytest.fail("the model was built"))
    with pytest.raises(InputValueError, match=r"MODEL.ROI_HEADS.NUM_CLASSES is 4, but dataset 'fruit_cfg', "
                                              r"which names the classes, has 3 categories"):
        SACTPredictor(tiny_cfg("DATASETS.COCO_JSON", str((("fruit_cfg", json_file, image_root),)),
                               "DATASETS.TEST", '("fruit_cfg",)'))

