"""Data that is read correctly or refused by name: annotations checked on load,
images of any bit depth, unusable files and checkpoints named, datasets found
from any directory (issue 10, items 4, 6, 7, 8)."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, tiny_cfg
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

from sact_det.data import datasets as datasets_module
from sact_det.data.annotations import boxes_for_training, validate_on_load
from sact_det.data.build import training_dataset_dicts
from sact_det.data.images import read_image_rgb
from sact_det.data.mapper import ReportingDatasetMapper
from sact_det.engine.checkpoint import SACTCheckpointer
from sact_det.engine.trainer import SACTTrainer


def coco_file(path, annotations, images=None, categories=None):
    """A COCO json of 100x80 (w x h) images 1-3 with these (image_id, category_id, xywh) boxes."""
    data = {"images": images if images is not None else
            [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2, 3)],
            "annotations": [{"id": n + 1, "image_id": image, "category_id": category, "bbox": box,
                             "area": 1.0, "iscrowd": 0}
                            for n, (image, category, box) in enumerate(annotations)],
            "categories": categories if categories is not None else [{"id": 1, "name": "thing"}]}
    path.write_text(json.dumps(data))
    return str(path)


def register(name, json_file, image_root="/nonexistent"):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)
    validate_on_load([name])


BAD_BOXES = [(1, 1, [10, 10, 20, 20]),     # fine
             (1, 1, [30, 10, -5, 20]),     # negative width
             (2, 1, [90, 70, 30, 30]),     # partly outside (to 120 x 100)
             (3, 1, [150, 10, 10, 10]),    # wholly outside
             (3, 1, [5, 5, 10, 0])]        # zero height


def test_annotation_problems_in_one_warning_and_boxes_for_training(tmp_path, sact_log):
    json_file = coco_file(tmp_path / "bad.json", BAD_BOXES)
    register("bad_boxes", json_file)
    dicts = DatasetCatalog.get("bad_boxes")
    warnings = [r.getMessage() for r in sact_log.records if r.name == "sact_det" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0]
    for part in ("'bad_boxes'", json_file, "4 of 5 boxes", "2 degenerate", "image ids 1, 3",
                 "1 partly outside", "image ids 2", "1 wholly outside", "image ids 3",
                 "evaluation keeps the annotations as they are"):
        assert part in message, part
    # Loading keeps the annotations as they are (what the COCO evaluator scores).
    assert [a["bbox"] for r in dicts for a in r["annotations"]] == [box for _, _, box in BAD_BOXES]

    cleaned = boxes_for_training(dicts)
    boxes = {r["image_id"]: [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                             for a in r["annotations"]] for r in cleaned}
    assert boxes == {1: [[10, 10, 30, 30]], 2: [[90, 70, 100, 80]], 3: []}
    cfg = tiny_cfg("DATASETS.TRAIN", "('bad_boxes',)")
    assert [r["image_id"] for r in training_dataset_dicts(cfg)] == [1, 2]  # image 3 has no usable box


@pytest.mark.parametrize("content, problem", [
    ('{"images": [', "is not valid JSON"),
    ('[1, 2]', "holds a JSON list, expected an object"),
    ('{"annotations": [], "categories": [{"id": 1, "name": "a"}]}', "has no 'images' list"),
    (None, "has 2 annotation.s. of category ids not listed in \"categories\" \\(7: 2; image ids 1, 2\\)"),
])
def test_unusable_annotation_files_are_named(tmp_path, content, problem):
    path = tmp_path / "annotations.json"
    if content is None:
        coco_file(path, [(1, 1, [1, 1, 5, 5]), (1, 7, [1, 1, 5, 5]), (2, 7, [1, 1, 5, 5])])
    else:
        path.write_text(content)
    register("unusable", str(path))
    with pytest.raises(ValueError, match=f"dataset 'unusable': annotation file {path} {problem}"):
        DatasetCatalog.get("unusable")


def test_training_without_a_readable_image_names_the_dataset(tmp_path):
    json_file = coco_file(tmp_path / "train.json", [(i, 1, [10, 10, 20, 20]) for i in (1, 2, 3)])
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 2):
        (images / f"{i}.jpg").write_bytes(b"not a jpeg")  # 3.jpg is missing
    register("unreadable_train", json_file, str(images))
    trainer = SACTTrainer(tiny_cfg("DATASETS.TRAIN", "('unreadable_train',)", "DATASETS.TEST", "()",
                                   "MODEL.ROI_HEADS.NUM_CLASSES", "1", "SOLVER.MAX_ITER", "1",
                                   "OUTPUT_DIR", str(tmp_path / "out")))
    with pytest.raises(Exception, match="none of the 3 training images of unreadable_train could be read"):
        trainer.train()


def gradient(height=40, width=60):
    return np.linspace(0, 1, height * width).reshape(height, width)


def write_images(folder):
    """Images of every bit depth and channel count: name -> (path, expected RGB at (20, 30))."""
    g = gradient()
    g16 = (g * 65535).round().astype(np.uint16)
    mid = round(g[20, 30] * 255)
    files = {}

    def add(name, expected, writer):
        path = str(folder / name)
        writer(path)
        files[name] = (path, expected)

    add("gray16.png", [mid] * 3, lambda p: cv2.imwrite(p, g16))
    add("rgb16.png", [mid, mid // 2, 255 - mid], lambda p: cv2.imwrite(p, np.dstack([65535 - g16, g16 // 2, g16])))
    add("float.tif", [mid] * 3, lambda p: Image.fromarray(g.astype(np.float32), "F").save(p))
    add("float_rgb.tif", [mid] * 3, lambda p: cv2.imwrite(p, np.dstack([g.astype(np.float32)] * 3),
                                                        [cv2.IMWRITE_TIFF_COMPRESSION, 1]))  # PIL cannot read it
    add("int32.tif", [mid] * 3, lambda p: cv2.imwrite(p, g16.astype(np.int32)))
    add("bit1.png", [255] * 3, lambda p: Image.fromarray(g > 0.2).convert("1").save(p))
    add("palette.png", [mid] * 3, lambda p: Image.fromarray((g * 255).round().astype(np.uint8)).convert("P").save(p))
    add("cmyk.tif", [100] * 3, lambda p: Image.new("RGB", (60, 40), (100, 100, 100)).convert("CMYK").save(p))
    # Half-transparent gray 100 over white: (100 + 255) / 2.
    add("la.png", [178] * 3, lambda p: Image.fromarray(np.full((40, 60, 2), [100, 128], np.uint8), "LA").save(p))
    add("rgba.png", [178, 255, 178], lambda p: Image.fromarray(np.full((40, 60, 4), [100, 255, 100, 128], np.uint8),
                                                              "RGBA").save(p))
    return files


def test_images_of_any_depth_and_channels(tmp_path):
    for name, (path, expected) in write_images(tmp_path).items():
        rgb = read_image_rgb(path)
        assert rgb.dtype == np.uint8 and rgb.shape == (40, 60, 3), name
        assert np.abs(rgb[20, 30].astype(int) - expected).max() <= 2, (name, rgb[20, 30], expected)
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((4, 4), np.nan, np.float32), "F").save(nan)
    with pytest.raises(OSError, match=f"cannot read image {nan}: it contains NaN"):
        read_image_rgb(str(nan))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(OSError, match=f"cannot read image {junk}: not an image file"):
        read_image_rgb(str(junk))


def test_training_and_evaluation_read_images_like_the_tools(tmp_path):
    """The data mapper uses the same reader: a 16-bit PNG is a gradient, not white."""
    path, (mid, _, _) = write_images(tmp_path)["gray16.png"]
    record = {"file_name": path, "height": 40, "width": 60, "image_id": 1, "annotations": []}
    cfg = tiny_cfg("INPUT.MIN_SIZE_TEST", "40", "INPUT.MAX_SIZE_TEST", "60",
                   "INPUT.MIN_SIZE_TRAIN", "(40,)", "INPUT.MAX_SIZE_TRAIN", "60")
    image = ReportingDatasetMapper(cfg, False)(dict(record))["image"]  # BGR, as the config says
    assert image.shape == (3, 40, 60) and image[:, 0, 0].tolist() == [0, 0, 0]
    assert (image[:, 20, 30].int() - mid).abs().max() <= 2 and image[:, -1, -1].tolist() == [255] * 3
    train_image = ReportingDatasetMapper(cfg, True)(dict(record))["image"]  # maybe flipped
    assert abs(train_image.float().mean() - image.float().mean()) < 0.5


def test_files_that_are_not_checkpoints_are_named(tmp_path):
    model = torch.nn.Linear(2, 2)
    junk = tmp_path / "random.pth"
    junk.write_bytes(os.urandom(1000).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(ValueError, match=f"{junk} is not a checkpoint: expected a file written by torch.save"):
        SACTCheckpointer(model).load(str(junk))
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path}/absent.pth does not exist"):
        SACTCheckpointer(model).load(str(tmp_path / "absent.pth"))
    tag = tmp_path / "last_checkpoint"
    tag.write_text("")
    with pytest.raises(FileNotFoundError, match=f"{tag} is empty: expected the file name of a checkpoint"):
        SACTCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    tag.write_text("model_0000099.pth")
    with pytest.raises(FileNotFoundError, match=f"{tag} names model_0000099.pth, which does not exist"):
        SACTCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)


def test_a_failed_save_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    checkpointer = SACTCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("model_0000001")

    def killed_midway(data, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000003")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")


def test_datasets_are_found_from_another_directory(tmp_path, monkeypatch, synthetic_root, sact_log):
    """Run elsewhere, the synthetic dataset is looked for (and generated, said where)
    in the repository's datasets/, not in a new ./datasets."""
    monkeypatch.delenv("DETECTRON2_DATASETS")
    monkeypatch.chdir(tmp_path)
    assert datasets_module.default_synthetic_root() == os.path.join(REPO, "datasets", "synthetic_coco")

    repository_datasets = tmp_path / "repo" / "datasets"  # stands for a fresh clone's datasets/
    repository_datasets.mkdir(parents=True)
    monkeypatch.setattr(datasets_module, "REPOSITORY_DATASETS", str(repository_datasets))
    generated = []
    monkeypatch.setattr(datasets_module, "generate_dataset", lambda root, **kwargs: generated.append(root))
    try:
        datasets_module.ensure_synthetic()
    finally:
        datasets_module.register_synthetic(synthetic_root)
    root = str(repository_datasets / "synthetic_coco")
    assert generated == [root] and not os.path.exists(tmp_path / "datasets")
    assert f"no ./datasets in {tmp_path}: using the repository's {repository_datasets}" in sact_log.text
    assert f"synthetic dataset not found in {root}: generating it there" in sact_log.text
