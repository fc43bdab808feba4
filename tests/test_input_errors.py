"""Bad input ends with one line naming the file, field or key, or a warning with
the right count (issue 23, minor items): images that cannot be read at
evaluation or by the tools, width and height swapped, NaN boxes, a dataset
without annotations, a class count that does not fit the dataset, benchmark
points above 100 % and an empty input directory."""
import json
import logging
import os
import shutil
import sys

import pytest
from conftest import REPO, config_path, load_tool

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

from sact_det.apps.visualization import expand_inputs
from sact_det.data.annotations import boxes_for_training, validate_on_load
from sact_det.engine.train_net import command_line

sys.path.insert(0, os.path.join(REPO, "tools"))
import benchmark  # noqa: E402

TINY = config_path("synthetic/sact_tiny.yaml")
EVAL_OPTS = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
             "MODEL.RPN.POST_NMS_TOPK_TEST", "32"]


def error_line(capsys):
    """The last stderr line; no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.fixture
def small_val(synthetic_root, tmp_path):
    """The first two images of the synthetic validation split as a dataset of
    one's own: (json path, image directory, COCO dict)."""
    coco = json.load(open(os.path.join(synthetic_root, "annotations", "instances_val.json")))
    coco["images"] = coco["images"][:2]
    ids = {image["id"] for image in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    images = tmp_path / "images"
    images.mkdir()
    for image in coco["images"]:
        shutil.copy(os.path.join(synthetic_root, "val", image["file_name"]), images / image["file_name"])
    return tmp_path / "small_val.json", images, coco


def evaluate(json_file, images, tmp_path, capsys, *opts):
    """(exit status, last stderr line) of ``train_net.py --eval-only`` on the dataset."""
    with pytest.raises(SystemExit) as exit_:
        command_line(["--config-file", TINY, "--eval-only", *EVAL_OPTS, *opts,
                      "DATASETS.COCO_JSON", f'(("small_val", "{json_file}", "{images}"),)',
                      "DATASETS.TEST", '("small_val",)', "OUTPUT_DIR", str(tmp_path / "eval")])
    return exit_.value.code, error_line(capsys)


@pytest.mark.parametrize("workers", ["0", "1"])  # 1: the error comes back from a data-loader worker
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_an_image_evaluation_cannot_read_is_named(small_val, tmp_path, capsys, damage, workers):
    json_file, images, coco = small_val
    json_file.write_text(json.dumps(coco))
    victim = images / coco["images"][1]["file_name"]
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(b"\xff\xd8 not really a jpeg")
    status, line = evaluate(json_file, images, tmp_path, capsys, "DATALOADER.NUM_WORKERS", workers)
    assert status == 2
    assert f"error: could not read image {victim}: " in line
    assert line.endswith("(evaluation needs every image of the dataset)")


def test_swapped_width_and_height_are_named(small_val, tmp_path, capsys):
    json_file, images, coco = small_val
    first = coco["images"][0]
    first["width"], first["height"] = first["height"], first["width"]
    json_file.write_text(json.dumps(coco))
    status, line = evaluate(json_file, images, tmp_path, capsys, "DATALOADER.NUM_WORKERS", "0")
    assert status == 2
    assert line.endswith(f"error: image {images / first['file_name']}: its annotation gives \"width\": "
                         f"{first['width']}, \"height\": {first['height']}, but the image is {first['height']} "
                         f"wide and {first['width']} high; width and height are swapped; correct them in the "
                         "dataset's annotation file")


def test_a_class_count_that_does_not_fit_the_dataset_fails_before_any_work(synthetic_root, tmp_path, capsys):
    output = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_:
        command_line(["--config-file", TINY, "--eval-only", *EVAL_OPTS, "MODEL.ROI_HEADS.NUM_CLASSES", "7",
                      "DATASETS.TEST", '("synthetic_val",)', "OUTPUT_DIR", str(output)])
    assert exit_.value.code == 2
    assert error_line(capsys).endswith(
        "error: MODEL.ROI_HEADS.NUM_CLASSES is 7, but dataset 'synthetic_val' has 4 categories (disc, square, "
        "triangle, star); set MODEL.ROI_HEADS.NUM_CLASSES 4")
    assert not (output / "config.yaml").exists() and not (output / "inference").exists()  # nothing done


def register(name, coco, tmp_path):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(coco))  # NaN and Infinity as Python's json writes them
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(path), "/nonexistent")
    validate_on_load([name])
    return str(path)


def coco_of(boxes):
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2, 3)],
            "annotations": [{"id": n + 1, "image_id": image, "category_id": 1, "bbox": box, "area": 1.0,
                             "iscrowd": 0} for n, (image, box) in enumerate(boxes)],
            "categories": [{"id": 1, "name": "thing"}]}


def warnings_of(log):
    return [r.getMessage() for r in log.records if r.name == "sact_det" and r.levelno == logging.WARNING]


def test_nan_boxes_are_counted_and_dropped_for_training(tmp_path, sact_log):
    nan, inf = float("nan"), float("inf")
    json_file = register("nan_boxes", coco_of([(1, [10, 10, 20, 20]), (1, [nan, 10, 20, 20]),
                                               (2, [10, 10, inf, 5]), (3, [150, 10, 10, 10])]), tmp_path)
    dicts = DatasetCatalog.get("nan_boxes")
    (message,) = warnings_of(sact_log)
    for part in (json_file, "3 of 4 boxes have problems", "2 not finite (NaN or infinite coordinates; image ids 1, 2)",
                 "1 wholly outside"):
        assert part in message, part
    boxes = {r["image_id"]: [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in r["annotations"]]
             for r in boxes_for_training(dicts)}
    assert boxes == {1: [[10, 10, 30, 30]], 2: [], 3: []}


def test_a_dataset_without_annotations_warns(tmp_path, sact_log):
    json_file = register("no_annotations", coco_of([]), tmp_path)
    assert len(DatasetCatalog.get("no_annotations")) == 3
    (message,) = warnings_of(sact_log)
    assert message == (f"dataset 'no_annotations': annotation file {json_file} has no annotations for its 3 images: "
                       "its box AP is undefined (reported as nan), and training has no box to learn from")


def test_a_non_image_given_to_visualize_data(small_val, tmp_path, capsys):
    json_file, images, coco = small_val
    json_file.write_text(json.dumps(coco))
    (images / coco["images"][0]["file_name"]).write_text("a text file, not an image")
    status = load_tool("visualize_data").main([
        "--config-file", TINY, "--source", "annotation", "--output", str(tmp_path / "vis"),
        "--opts", "DATASETS.COCO_JSON", f'(("small_val", "{json_file}", "{images}"),)',
        "DATASETS.TRAIN", '("small_val",)'])
    assert status == 2
    assert error_line(capsys).endswith(f"error: cannot read image {images / coco['images'][0]['file_name']}: not an "
                                       "image file PIL or OpenCV can decode")


def test_a_non_image_given_to_export_model(synthetic_root, tmp_path, capsys):
    text = tmp_path / "notes.jpg"
    text.write_text("a text file, not an image")
    status = load_tool("deploy/export_model").main([
        "--config-file", TINY, "--output", str(tmp_path / "out"), "--sample-image", str(text),
        "--opts", "MODEL.DEVICE", "cpu"])
    assert status == 2
    assert error_line(capsys).endswith(f"error: cannot read image {text}: not an image file PIL or OpenCV can decode")
    assert not (tmp_path / "out" / "model.ts").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--points", "150"], "argument --points: expected a percentage of the dense FLOPs in (0, 100] or 'trained', "
                          "got '150'"),
    (["--points", "50", "--head-points", "120"], "argument --head-points: expected a percentage in (0, 100], "
                                                  "got '120'"),
    (["--profile", "101"], "argument --profile: expected a percentage in (0, 100], got '101'"),
])
def test_benchmark_points_above_100_percent_are_refused(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--config-file", TINY, "--executions", "dense", "--warmup", "0", "--repeats", "1", *argv])
    assert exit_.value.code == 2 and error_line(capsys).endswith("error: " + expected)


def test_an_empty_input_directory_says_so(tmp_path):
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "notes.txt").write_text("")
    paths, failures = expand_inputs([str(empty), str(other), str(tmp_path / "absent")])
    assert paths == [] and failures == [
        (str(empty), "the directory is empty"),
        (str(other), "the directory holds no image files (expected .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp, "
                     ".gif)"),
        (str(tmp_path / "absent"), "no such file, directory, or files matching the pattern")]


@pytest.mark.parametrize("key,value,message", [
    ("DATASETS.IMAGE_FOLDERS", "('data/train',)", "DATASETS.IMAGE_FOLDERS must be a list of (name, directory) "
     "pairs, e.g. ((\"my_train\", \"data/train\"),); got the entry 'data/train'"),
    ("DATASETS.COCO_JSON", "(('a', 'b.json'),)", "DATASETS.COCO_JSON must be a list of (name, json_file, image_root) "
     "triples, e.g. ((\"my_train\", \"train.json\", \"images/\"),); got the entry ('a', 'b.json')"),
    ("DATASETS.IMAGE_FOLDERS", "(('a', 'x'), ('a', 'y'))",
     "DATASETS.IMAGE_FOLDERS names each dataset once; ['a'] appear more than once"),
])
def test_named_dataset_lists_are_checked_with_the_expected_shape(key, value, message):
    from sact_det.config import get_config_file, get_sact_cfg

    with pytest.raises(ValueError) as error:
        get_sact_cfg(get_config_file("synthetic/sact_tiny.yaml"), [key, value])
    assert str(error.value) == message
