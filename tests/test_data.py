"""The synthetic dataset, version 2 (sact_det.data.synthetic): what varies, the held-out split, versions;
generated only where none exists, a partly present one named (issue 23, item 4)."""
import json
import logging
import os
import re

import numpy as np
import pytest
from conftest import config_path, load_tool

from detectron2.data import DatasetCatalog

from sact_det.data import datasets as datasets_module
from sact_det.data import ensure_synthetic, register_synthetic
from sact_det.data.datasets import GENERATING
from sact_det.data.synthetic import (BACKGROUND_STYLES, DATASET_VERSION, MIN_VISIBLE, OBJECT_STYLES, TEXTURE_SPLIT,
                                     generate_dataset, generate_split, generate_texture_split, render_image,
                                     split_paths)
from sact_det.engine.train_net import command_line


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


def test_texture_split_is_plain_against_fine_texture_half_and_half(tmp_path):
    options = dict(num_train=3, num_val=16, seed=0, size_range=((96, 112), (120, 140)), max_objects=4)
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    generate_texture_split(first, options)
    generate_texture_split(second, options)
    coco = load(first, TEXTURE_SPLIT)
    assert coco == load(second, TEXTURE_SPLIT)  # deterministic for a seed
    assert (tmp_path / "a" / TEXTURE_SPLIT / "000003.jpg").read_bytes() == \
        (tmp_path / "b" / TEXTURE_SPLIT / "000003.jpg").read_bytes()
    assert len(coco["images"]) == 16 and coco["info"]["options"] == json.loads(json.dumps(options))
    assert {image["background"] for image in coco["images"]} <= set(BACKGROUND_STYLES["train"])
    styles = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        styles[annotation["image_id"]].append(annotation["style"])
    for kinds in styles.values():  # in turn within each image: both kinds, as many of each but one
        assert set(kinds) <= {"flat", "fine_noise"} and abs(kinds.count("flat") - kinds.count("fine_noise")) <= 1
    every = [kind for kinds in styles.values() for kind in kinds]
    assert 0.4 < every.count("flat") / len(every) < 0.6 and sum(len(kinds) > 1 for kinds in styles.values()) > 4


def test_the_texture_split_is_generated_when_a_run_asks_for_it(small_root):
    json_file, _ = split_paths(small_root, TEXTURE_SPLIT)
    ensure_synthetic(small_root)
    assert not os.path.exists(json_file)  # not part of the dataset: older copies stay complete
    ensure_synthetic(small_root, names=["synthetic_val", "synthetic_val_texture"])
    assert len(DatasetCatalog.get("synthetic_val_texture")) == SMALL["num_val"]
    before = files_of(small_root)
    ensure_synthetic(small_root, names=["synthetic_val_texture"])
    assert files_of(small_root) == before  # made from the dataset's options: reused
    coco = load(small_root, TEXTURE_SPLIT)
    coco["info"]["options"]["seed"] = 7  # made for another dataset (e.g. the tool rewrote it): made again
    json.dump(coco, open(json_file, "w"))
    ensure_synthetic(small_root, names=["synthetic_val_texture"])
    assert load(small_root, TEXTURE_SPLIT)["info"]["options"]["seed"] == 0


@pytest.mark.parametrize("split", ["synthetic_val", "synthetic_val_heldout"])
def test_both_validation_splits_are_registered(synthetic_root, split):
    dicts = DatasetCatalog.get(split)
    assert dicts and all(d["annotations"] for d in dicts)


SMALL = dict(num_train=3, num_val=2, size_range=((64, 72), (80, 96)), max_objects=2)


@pytest.fixture
def small_root(synthetic_root, tmp_path, monkeypatch):
    """A complete small synthetic dataset at a root of its own; after it is made,
    any further generation by ensure_synthetic fails the test."""
    root = str(tmp_path / "synthetic_coco")
    ensure_synthetic(root, **SMALL)

    def no_generation(*args, **kwargs):
        raise AssertionError("the dataset was generated again")
    monkeypatch.setattr(datasets_module, "generate_dataset", no_generation)
    yield root
    register_synthetic(synthetic_root)  # other tests use the session's dataset


def files_of(root):
    return {os.path.relpath(os.path.join(folder, name), root): os.path.getmtime(os.path.join(folder, name))
            for folder, _, names in os.walk(root) for name in names}


def test_a_complete_dataset_is_used_as_it_is(small_root):
    before = files_of(small_root)
    ensure_synthetic(small_root)
    assert files_of(small_root) == before and len(DatasetCatalog.get("synthetic_train")) == 3


def test_a_partly_present_dataset_is_an_error_that_says_how_to_regenerate(small_root):
    """Issue 23, item 4: one split's json deleted. Nothing is generated or
    overwritten; the error names what is missing and the command, with the
    dataset's own sizes, which then makes it whole."""
    json_file = split_paths(small_root, "val")[0]
    os.remove(json_file)
    before = files_of(small_root)
    with pytest.raises(FileNotFoundError) as error:
        ensure_synthetic(small_root)
    message = str(error.value)
    assert message.startswith(f"the synthetic dataset in {small_root} is incomplete: {json_file} is missing. "
                              "Nothing was changed; regenerate it with `python tools/make_synthetic_coco.py --output "
                              f"{small_root} --num-train 3 --num-val 2 --seed 0`")
    assert files_of(small_root) == before

    command = message.split("`")[1].split()
    assert load_tool("make_synthetic_coco").main(command[2:]) == 0
    assert len(load(small_root, "train")["images"]) == 3 and len(load(small_root, "val")["images"]) == 2


@pytest.mark.parametrize("damage, problem", [
    ("image", "1 of the 3 images of {root}/train are missing (e.g. 000002.jpg)"),
    ("truncated", "{root}/annotations/instances_train.json is not valid JSON ("),
    ("foreign", "{root}/annotations/instances_train.json was not written by sact-det's generator"),
])
def test_what_is_missing_or_unusable_is_named(small_root, damage, problem):
    json_file = split_paths(small_root, "train")[0]
    if damage == "image":
        os.remove(os.path.join(small_root, "train", "000002.jpg"))
    elif damage == "truncated":
        with open(json_file, "r+") as f:
            f.truncate(12)
    else:  # a COCO file of the user's own in the dataset's place
        coco = load(small_root, "train")
        coco["info"] = {"description": "my own shapes"}
        json.dump(coco, open(json_file, "w"))
    before = files_of(small_root)
    with pytest.raises(FileNotFoundError, match="is incomplete: " + re.escape(problem.format(root=small_root))):
        ensure_synthetic(small_root)
    assert files_of(small_root) == before


def test_a_truncated_synthetic_json_ends_the_tool_with_its_name(small_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", os.path.dirname(small_root))
    json_file = split_paths(small_root, "val")[0]
    with open(json_file, "r+") as f:
        f.truncate(12)
    with pytest.raises(SystemExit) as exit_:
        command_line(["--config-file", config_path("synthetic/sact_tiny.yaml"), "--eval-only", "MODEL.DEVICE", "cpu",
                      "OUTPUT_DIR", str(tmp_path / "eval")])
    assert exit_.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: the synthetic dataset in {small_root} is incomplete: {json_file} is not valid JSON (" in line


def test_an_older_version_is_moved_aside_not_overwritten(small_root, monkeypatch):
    """A complete dataset of an older generator is generated again at its own
    sizes; the old copy, with whatever the user put in it, is kept beside it."""
    for split in ("train", "val", "val_heldout"):
        json_file = split_paths(small_root, split)[0]
        coco = load(small_root, split)
        coco["info"]["version"] = 1
        json.dump(coco, open(json_file, "w"))
    with open(os.path.join(small_root, "my_notes.txt"), "w") as f:
        f.write("mine")
    old = files_of(small_root)
    generated = []
    monkeypatch.setattr(datasets_module, "generate_dataset",
                        lambda root, **kwargs: generated.append(kwargs) or generate_dataset(root, **kwargs))
    ensure_synthetic(small_root)
    assert files_of(small_root + ".v1") == old
    assert open(os.path.join(small_root + ".v1", "my_notes.txt")).read() == "mine"
    assert generated == [dict(SMALL, num_heldout=2, seed=0)]
    assert load(small_root, "val")["info"]["version"] == DATASET_VERSION
    assert len(load(small_root, "train")["images"]) == 3


def test_an_interrupted_generation_is_generated_again(synthetic_root, tmp_path):
    root = str(tmp_path / "synthetic_coco")
    os.makedirs(os.path.join(root, "train"))
    with open(os.path.join(root, GENERATING), "w") as f:  # what a generation killed early leaves
        f.write("generating")
    try:
        ensure_synthetic(root, **SMALL)
        assert len(load(root, "val_heldout")["images"]) == 2 and not os.path.exists(os.path.join(root, GENERATING))
    finally:
        register_synthetic(synthetic_root)


def test_processes_started_together_generate_the_dataset_once(tmp_path):
    """Two processes that find no dataset (two trainings on a fresh clone, the
    ranks of a launch): one generates, the other waits and uses its result."""
    import subprocess
    import sys
    import time
    root, go = tmp_path / "synthetic_coco", tmp_path / "go"
    script = tmp_path / "ensure.py"
    script.write_text(f"""import os, sys, time
from detectron2.utils.logger import setup_logger
from sact_det.data import ensure_synthetic
setup_logger(name="sact_det")
open(sys.argv[1], "w").close()  # imported: ready
while not os.path.exists({str(go)!r}):
    time.sleep(0.01)
ensure_synthetic({str(root)!r}, **{dict(SMALL, num_train=40)!r})
""")
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"ready{i}")], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):  # start both at once
        assert all(run.poll() is None for run in runs), [run.communicate()[0] for run in runs]
        time.sleep(0.05)
    go.touch()
    logs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    assert sum("generating it there" in log for log in logs) == 1, logs
    assert not any("interrupted" in log for log in logs), logs
    assert len(load(str(root), "train")["images"]) == 40 and not os.path.exists(root / GENERATING)
