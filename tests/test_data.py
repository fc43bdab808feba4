"""The synthetic dataset, version 2 (sact_det.data.synthetic): what varies, the held-out split, versions."""
import json
import logging

import numpy as np
import pytest

from detectron2.data import DatasetCatalog

from sact_det.data import ensure_synthetic, register_synthetic
from sact_det.data.synthetic import (BACKGROUND_STYLES, DATASET_VERSION, MIN_VISIBLE, OBJECT_STYLES, generate_split,
                                     render_image, split_paths)


def load(root, split):
    return json.load(open(split_paths(root, split)[0]))


def test_appearance_varies_independently_of_the_category(tmp_path):
    generate_split(str(tmp_path), "train", 60, seed=3)
    coco = load(str(tmp_path), "train")
    pairs = {(a["category_id"], a["style"]) for a in coco["annotations"]}
    for category in (1, 2, 3, 4):  # every category in several appearances
        assert len({style for c, style in pairs if c == category}) >= 3
    assert {style for _, style in pairs} == set(OBJECT_STYLES["train"])
    assert {image["background"] for image in coco["images"]} == set(BACKGROUND_STYLES["train"])
    # Several scales, small ones included (boxes of visible regions, in pixels).
    sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]])
    assert sides.min() < 30 and sides.max() > 90
    assert coco["info"]["version"] == DATASET_VERSION


def test_objects_stay_mostly_visible_and_annotations_are_their_visible_regions():
    rng = np.random.RandomState(5)
    occluded = 0
    for _ in range(20):
        image, objects, _ = render_image(rng, 240, 320, max_objects=5)
        assert image.dtype == np.uint8 and image.shape == (240, 320, 3)
        for obj in objects:
            visible = int(obj["visible"].sum())
            assert visible >= MIN_VISIBLE * obj["area"] - 1
            occluded += visible < obj["area"]
    assert occluded > 0  # occlusion happens


def test_held_out_split_uses_unseen_styles(tmp_path):
    generate_split(str(tmp_path), "val_heldout", 30, seed=4, split_styles="heldout")
    coco = load(str(tmp_path), "val_heldout")
    assert {a["style"] for a in coco["annotations"]} <= set(OBJECT_STYLES["heldout"])
    assert {i["background"] for i in coco["images"]} <= set(BACKGROUND_STYLES["heldout"])
    assert not set(OBJECT_STYLES["heldout"]) & set(OBJECT_STYLES["train"])
    assert not set(BACKGROUND_STYLES["heldout"]) & set(BACKGROUND_STYLES["train"])


def test_generation_is_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    generate_split(str(first), "val", 3, seed=9)
    generate_split(str(second), "val", 3, seed=9)
    assert load(str(first), "val") == load(str(second), "val")
    assert (first / "val" / "000002.jpg").read_bytes() == (second / "val" / "000002.jpg").read_bytes()


def test_an_older_copy_is_regenerated_with_a_message(synthetic_root, tmp_path, caplog):
    root = str(tmp_path / "synthetic_coco")
    kwargs = dict(num_train=3, num_val=2, size_range=((96, 100), (120, 128)))
    ensure_synthetic(root, **kwargs)
    try:
        for split in ("train", "val", "val_heldout"):  # a version-1 copy: no version recorded
            json_file = split_paths(root, split)[0]
            coco = json.load(open(json_file))
            coco["info"].pop("version")
            coco["images"] = coco["images"][:1]
            json.dump(coco, open(json_file, "w"))
        with caplog.at_level(logging.WARNING, logger="sact_det"):
            ensure_synthetic(root, **kwargs)
        assert "version [1]; regenerating version 2" in caplog.text
        assert len(load(root, "val")["images"]) == 2 and load(root, "val")["info"]["version"] == 2
        assert len(DatasetCatalog.get("synthetic_val_heldout")) == 2
    finally:
        register_synthetic(synthetic_root)  # other tests use the session's dataset


@pytest.mark.parametrize("split", ["synthetic_val", "synthetic_val_heldout"])
def test_both_validation_splits_are_registered(synthetic_root, split):
    dicts = DatasetCatalog.get(split)
    assert dicts and all(d["annotations"] for d in dicts)
