"""COCO-format datasets named in the config (DATASETS.COCO_JSON), no code needed."""
import json
import os
import shutil

import pytest
from conftest import config_path, tiny_cfg

from detectron2.data import DatasetCatalog, MetadataCatalog

from sact_det.data import check_datasets_exist, register_config_datasets
from sact_det.data.build import training_dataset_dicts
from sact_det.data.datasets import coco_category_names
from sact_det.data.synthetic import split_paths
from sact_det.engine.defaults import load_config, setup
from sact_det.engine.train_net import argument_parser, main
from sact_det.engine.trainer import SACTTrainer


@pytest.fixture
def my_dataset(synthetic_root, tmp_path):
    """The synthetic validation split as 'someone else's' dataset: other class
    names, categories listed out of id order, and the key "categories" also
    appearing inside a file name."""
    coco = json.load(open(os.path.join(synthetic_root, "annotations", "instances_val.json")))
    coco["categories"] = [{"id": 4, "name": "star"}, {"id": 2, "name": "box"},
                          {"id": 1, "name": "ball"}, {"id": 3, "name": "wedge"}]
    images = tmp_path / "imgs"
    shutil.copytree(os.path.join(synthetic_root, "val"), images)
    os.rename(images / coco["images"][0]["file_name"], images / "categories.jpg")
    coco["images"][0]["file_name"] = "categories.jpg"
    path = tmp_path / "my.json"
    path.write_text(json.dumps(coco))
    return str(path), str(images)


def test_command_line_registers_and_loads(my_dataset):
    json_file, image_root = my_dataset
    cfg = tiny_cfg("DATASETS.COCO_JSON", f'(("my_val", "{json_file}", "{image_root}"),)',
                   "DATASETS.TEST", '("my_val",)')
    assert register_config_datasets(cfg) == ["my_val"]
    # Class names before the annotations are loaded (visualisers need them), ordered by id...
    assert MetadataCatalog.get("my_val").thing_classes == ["ball", "box", "wedge", "star"]
    check_datasets_exist(["my_val"])
    records = DatasetCatalog.get("my_val")  # ...as load_coco_json orders them (it refuses a change)
    assert len(records) == 4 and records[0]["file_name"].endswith("categories.jpg")
    assert all("style" in a for r in records for a in r["annotations"])  # kept: the evaluator groups by it
    assert MetadataCatalog.get("my_val").thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3}


def test_categories_read_without_the_fast_path(tmp_path):
    path = tmp_path / "first.json"  # categories first, then an images list mentioning the key
    path.write_text(json.dumps({"categories": [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}],
                                "images": [{"file_name": "x", "categories": "not a list"}]}))
    assert coco_category_names(str(path)) == ["a", "b"]
    (tmp_path / "none.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no \"categories\" list"):
        coco_category_names(str(tmp_path / "none.json"))


def test_engine_setup_registers_and_checks(my_dataset, tmp_path):
    json_file, image_root = my_dataset
    args = argument_parser().parse_args([
        "--config-file", config_path("synthetic/sact_tiny.yaml"), "--eval-only",
        "DATASETS.COCO_JSON", f'(("my_eval", "{json_file}", "{image_root}"),)',
        "DATASETS.TEST", '("my_eval",)', "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"])
    cfg = setup(args)
    assert cfg.DATASETS.TEST == ("my_eval",) and "my_eval" in DatasetCatalog.list()

    missing_root = ["DATASETS.COCO_JSON", f'(("my_eval", "{json_file}", "{tmp_path / "nowhere"}"),)',
                    "DATASETS.TEST", '("my_eval",)', "OUTPUT_DIR", str(tmp_path / "out2"), "MODEL.DEVICE", "cpu"]
    args = argument_parser().parse_args(
        ["--config-file", config_path("synthetic/sact_tiny.yaml"), "--eval-only", *missing_root])
    with pytest.raises(FileNotFoundError, match="image_root .*nowhere.* does not exist; check its entry in "
                                                "DATASETS.COCO_JSON"):
        setup(args)


@pytest.mark.parametrize("value, message", [
    ('("my_train", "a.json", "imgs")', "triples"),  # one triple without the outer tuple
    ('(("my_train", "a.json"),)', "triples"),
    ('(("a", "a.json", "i"), ("a", "b.json", "i"))', "more than once"),
])
def test_malformed_entries_name_the_key(value, message):
    with pytest.raises(ValueError, match=f"DATASETS.COCO_JSON.*{message}"):
        tiny_cfg("DATASETS.COCO_JSON", value)


def test_builtin_names_are_not_replaced(my_dataset):
    json_file, image_root = my_dataset
    cfg = tiny_cfg("DATASETS.COCO_JSON", f'(("coco_2017_val", "{json_file}", "{image_root}"),)')
    with pytest.raises(ValueError, match="'coco_2017_val' is already a registered dataset"):
        register_config_datasets(cfg)
    assert MetadataCatalog.get("coco_2017_val").json_file.endswith("instances_val2017.json")


def test_missing_json_is_reported_when_used(tmp_path):
    cfg = tiny_cfg("DATASETS.COCO_JSON", f'(("my_absent", "{tmp_path / "a.json"}", "{tmp_path}"),)')
    register_config_datasets(cfg)  # registering is fine: a config may list datasets a run does not use
    with pytest.raises(FileNotFoundError, match="'my_absent': json_file .*a.json' does not exist"):
        check_datasets_exist(["my_absent"])


def test_yaml_form(my_dataset, tmp_path):
    json_file, image_root = my_dataset
    config = tmp_path / "mine.yaml"
    config.write_text(f'_BASE_: "{config_path("synthetic/sact_tiny.yaml")}"\n'
                      f'DATASETS:\n  COCO_JSON: [["my_yaml", "{json_file}", "{image_root}"]]\n'
                      '  TEST: ("my_yaml",)\n')
    cfg = load_config(str(config), ["MODEL.DEVICE", "cpu"])  # what every tool does
    assert MetadataCatalog.get("my_yaml").thing_classes[0] == "ball"
    assert cfg.DATASETS.COCO_JSON[0][0] == "my_yaml"


def test_training_on_a_config_dataset_and_the_heldout_split(synthetic_root, tmp_path, sact_log):
    """The training data path (annotation checks, boxes clipped for training, the
    resumable stream) on a DATASETS.COCO_JSON dataset beside synthetic_val_heldout."""
    coco = json.load(open(split_paths(synthetic_root, "val")[0]))
    annotation = coco["annotations"][0]
    image = next(i for i in coco["images"] if i["id"] == annotation["image_id"])
    annotation["bbox"] = [image["width"] - 10, 5, 40, 20]  # partly outside the image
    json_file = tmp_path / "mine.json"
    json_file.write_text(json.dumps(coco))
    image_root = split_paths(synthetic_root, "val")[1]
    datasets = ["DATASETS.COCO_JSON", f'(("mine_train", "{json_file}", "{image_root}"),)',
                "DATASETS.TRAIN", '("mine_train", "synthetic_val_heldout")', "DATASETS.TEST", "()"]
    cfg = tiny_cfg(*datasets, "SEED", "3")
    register_config_datasets(cfg)

    dicts = training_dataset_dicts(cfg)
    heldout = DatasetCatalog.get("synthetic_val_heldout")
    assert len(dicts) == len(coco["images"]) + len(heldout)
    record = next(r for r in dicts if r["file_name"] == os.path.join(image_root, image["file_name"]))
    assert [image["width"] - 10, 5, image["width"], 25] in [a["bbox"] for a in record["annotations"]]  # clipped
    assert f"dataset 'mine_train' ({json_file}): 1 of" in sact_log.text and "1 partly outside" in sact_log.text

    def ids(loader, count):
        stream = iter(loader)
        return [[s["file_name"] for s in next(stream)] for _ in range(count)]

    whole = ids(SACTTrainer.build_train_loader(cfg), 3)
    resumed = SACTTrainer.build_train_loader(cfg)
    resumed.start_at(2)
    assert ids(resumed, 1) == whole[2:]

    args = argument_parser().parse_args(["--config-file", config_path("synthetic/sact_tiny.yaml"), *datasets,
                                         "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                                         "INPUT.MAX_SIZE_TRAIN", "192", "SOLVER.IMS_PER_BATCH", "2",
                                         "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "1",
                                         "OUTPUT_DIR", str(tmp_path / "out")])
    main(args)
    assert os.path.exists(tmp_path / "out" / "model_final.pth")
