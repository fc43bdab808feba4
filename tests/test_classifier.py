"""The ImageNet stage: the SACT classifier trained and evaluated like the detector,
its data (image folders, the synthetic classification set, the transforms), a
detector initialised from its checkpoint, and the ponder-map tools on it."""
import csv
import json
import logging
import os
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, StopAfter, config_path, tiny_cfg, tiny_cls_cfg
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from sact_det.data.classification import image_folder_dicts, register_image_folders
from sact_det.data.cls_mapper import ClassificationMapper, RandomResizedCrop
from sact_det.data.synthetic_cls import CLS_CLASSES, CLS_DATASET_VERSION, generate_classification_dataset
from sact_det.engine.checkpoint import SACTCheckpointer
from sact_det.engine.predictor import SACTPredictor
from sact_det.engine.train_net import main
from sact_det.engine.trainer import SACTTrainer

sys.path.insert(0, os.path.join(REPO, "tools"))
import eval_saliency  # noqa: E402
import visualize_ponder  # noqa: E402
from test_saliency import write_cat2000  # noqa: E402


def train_cfg(output_dir, *opts):
    return tiny_cls_cfg("OUTPUT_DIR", str(output_dir), "SOLVER.WARMUP_ITERS", "2", *opts)


def test_classifier_trains_and_evaluates(synthetic_cls_root, tmp_path):
    cfg = train_cfg(tmp_path, "SOLVER.MAX_ITER", "3")
    trainer = SACTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    histories = trainer.storage.histories()
    for key in ("loss_cls", "loss_ponder", "cls_accuracy", "sact/ponder_cost/res5", "sact/units/res2",
                "sact/ponder_cost/total"):
        assert key in histories, key
    # tau * sum over the four blocks, every unit running at init (b = -3): 3 + 4 + 6 + 3 units
    total = histories["sact/ponder_cost/total"].values()[0][0]
    assert 3 + 4 + 6 + 3 < total <= 3 + 4 + 6 + 3 + 4
    assert histories["loss_ponder"].values()[0][0] == pytest.approx(0.01 * total, rel=1e-4)

    weights = str(tmp_path / "model_final.pth")
    opts = ["MODEL.DEVICE", "cpu", "INPUT.CLS.TEST_RESIZE", "55", "INPUT.CLS.TEST_SIZE", "48", "TEST.IMS_PER_BATCH",
            "3", "DATALOADER.NUM_WORKERS", "0", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "eval")]
    args = default_argument_parser().parse_args(
        ["--config-file", config_path("synthetic/cls_sact_tiny.yaml"), "--eval-only", *opts])
    results = main(args)
    assert set(results) == {"synthetic_cls_val", "synthetic_cls_val_heldout"}
    for dataset_results in results.values():
        accuracy, sact = dataset_results["classification"], dataset_results["sact"]
        assert 0 <= accuracy["top1"] <= accuracy["top5"] == 100.0  # 4 classes: top-5 is every class
        assert sact["FLOPs"] > 0 and 0 < sact["FLOPs_pct"] <= 105 and sact["FLOPs_std"] >= 0
        assert {f"units_{b}" for b in ("res2", "res3", "res4", "res5")} <= set(sact)
        assert sact["ponder_cost"] == pytest.approx(sum(sact[f"ponder_cost_res{k}"] for k in range(2, 6)))
    report = json.load(open(tmp_path / "eval" / "inference" / "synthetic_cls_val" / "sact_report.json"))
    images = report["images"]
    assert report["summary"]["num_images"] == 8 == len(images)
    assert report["summary"]["top1"] == results["synthetic_cls_val"]["classification"]["top1"]
    labels = {CLS_CLASSES.index(os.path.basename(os.path.dirname(r["file_name"]))) for r in images}
    assert labels == set(range(4)) and all(r["label"] in labels for r in images)
    for record in images:
        assert record["correct_top1"] == (record["top5"][0] == record["label"]) and len(record["top5"]) == 4
        assert record["flops_per_block"]["linear"] == 2 * 512 * 4  # the classifier's linear layer counts
        assert record["flops"] == sum(record["flops_per_block"].values())
        assert record["image_size"] == [48, 48]


def test_classifier_resumes(synthetic_cls_root, tmp_path):
    cfg = train_cfg(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()")
    first = SACTTrainer(cfg)
    first.register_hooks([StopAfter(2)])
    with pytest.raises(KeyboardInterrupt):
        first.train()
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    second = SACTTrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 2
    for key, value in saved["model"].items():
        assert torch.equal(second.model.state_dict()[key], value), key
    second.train()
    assert torch.load(tmp_path / "model_final.pth", weights_only=False)["iteration"] == 3


def write_folder(root, corrupt: bool = False):
    """Two classes of 3 images each (sizes vary), and one unreadable file."""
    rng = np.random.RandomState(0)
    for name in ("b_class", "a_class"):
        os.makedirs(root / name)
        for index in range(3):
            size = (40 + 7 * index, 50 + 5 * index, 3)
            Image.fromarray(rng.randint(0, 255, size, np.uint8)).save(root / name / f"{index}.png")
    (root / "a_class" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "a_class" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")


def test_image_folder_dataset(tmp_path):
    write_folder(tmp_path / "data")
    dicts = image_folder_dicts(str(tmp_path / "data"))
    assert [(os.path.basename(os.path.dirname(d["file_name"])), d["label"]) for d in dicts] == \
        [("a_class", 0)] * 3 + [("b_class", 1)] * 3  # classes sorted, labels their index
    assert [d["image_id"] for d in dicts] == list(range(6))
    register_image_folders([("my_folder", str(tmp_path / "data"))])
    assert MetadataCatalog.get("my_folder").classes == ["a_class", "b_class"]
    assert len(DatasetCatalog.get("my_folder")) == 6
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder_dicts(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty" / "cls")
    with pytest.raises(ValueError, match="has no images"):
        image_folder_dicts(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="already a registered dataset"):
        register_image_folders([("imagenet_val", str(tmp_path / "data"))])
    with pytest.raises(ValueError, match="DATASETS.IMAGE_FOLDERS must be a list of"):
        tiny_cls_cfg("DATASETS.IMAGE_FOLDERS", "(('name_only',),)")


def test_unreadable_training_image_is_skipped_and_named(tmp_path, sact_log):
    write_folder(tmp_path / "data", corrupt=True)
    folders = f"(('folder_train', '{tmp_path / 'data'}'),)"
    cfg = train_cfg(tmp_path / "out", "DATASETS.IMAGE_FOLDERS", folders, "DATASETS.TRAIN", "('folder_train',)",
                    "DATASETS.TEST", "()", "MODEL.CLASSIFIER.NUM_CLASSES", "2", "SOLVER.MAX_ITER", "3",
                    "SOLVER.IMS_PER_BATCH", "7")
    register_image_folders(cfg.DATASETS.IMAGE_FOLDERS)
    trainer = SACTTrainer(cfg)
    trainer.train()  # every batch of 7 holds the broken file: it is replaced
    assert trainer.iter == 3
    assert any("broken.jpg" in r.getMessage() and "skipping it" in r.getMessage() for r in sact_log.records)


def test_transforms_follow_the_config(tmp_path):
    cfg = tiny_cls_cfg("INPUT.CLS.TRAIN_SIZE", "32", "INPUT.CLS.TRAIN_MIN_AREA", "0.3", "INPUT.CLS.TEST_RESIZE", "40",
                       "INPUT.CLS.TEST_SIZE", "36")
    write_folder(tmp_path / "data")
    record = image_folder_dicts(str(tmp_path / "data"))[2]  # 54 x 60
    np.random.seed(0)
    sample = ClassificationMapper(cfg, True)(record)
    assert sample["image"].shape == (3, 32, 32) and sample["label"] == 0 and sample["image"].dtype == torch.uint8
    assert ClassificationMapper(cfg, False)(record)["image"].shape == (3, 36, 36)
    crop = RandomResizedCrop(32, scale=(0.3, 1.0))
    for _ in range(50):
        x0, y0, w, h = crop._box(54, 60)
        assert 0.3 * 54 * 60 * 0.9 <= w * h <= 54 * 60 and x0 + w <= 60 and y0 + h <= 54
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_synthetic_classification_set(tmp_path):
    counts = generate_classification_dataset(str(tmp_path / "a"), num_train=8, num_val=4, num_heldout=4,
                                             size_range=((40, 48), (40, 48)))
    assert counts == {"train": 8, "val": 4, "val_heldout": 4}
    info = json.load(open(tmp_path / "a" / "info.json"))
    assert info["version"] == CLS_DATASET_VERSION and info["classes"] == CLS_CLASSES
    for split, count in counts.items():
        per_class = [len(os.listdir(tmp_path / "a" / split / name)) for name in CLS_CLASSES]
        assert per_class == [count // 4] * 4  # balanced
    generate_classification_dataset(str(tmp_path / "b"), num_train=8, num_val=4, num_heldout=4,
                                    size_range=((40, 48), (40, 48)))
    for path in ("train/star/000003.jpg", "val_heldout/disc/000000.jpg"):  # deterministic
        assert open(tmp_path / "a" / path, "rb").read() == open(tmp_path / "b" / path, "rb").read()


def random_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Every float parameter and buffer random, so that values identify their source."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)


@pytest.mark.parametrize("unit_type,head,norm,detector_norm", [("post_activation", "none", "False", "BN"),
                                                                ("pre_activation", "act", "True", "FrozenBN")])
def test_classifier_checkpoint_initialises_the_detector(tmp_path, caplog, unit_type, head, norm, detector_norm):
    opts = ("MODEL.SACT.UNIT_TYPE", unit_type, "MODEL.SACT.HALTING_NORM", norm)
    classifier = build_model(tiny_cls_cfg(*opts))
    random_weights(classifier)
    SACTCheckpointer(classifier, save_dir=str(tmp_path)).save("model_final")
    source = classifier.state_dict()
    detector = build_model(tiny_cfg(*opts, "MODEL.SACT.RES5_NUM_UNITS", "3", "MODEL.SACT.HEAD_TYPE", head,
                                    "MODEL.RESNETS.NORM", detector_norm))  # FrozenBN: as fine-tuned in A.2
    checkpointer = SACTCheckpointer(detector)
    checkpointer.logger.addHandler(caplog.handler)  # recorded whatever its propagation
    caplog.set_level(logging.INFO, logger=checkpointer.logger.name)
    try:
        checkpointer.load(str(tmp_path / "model_final.pth"))
    finally:
        checkpointer.logger.removeHandler(caplog.handler)
    loaded = detector.state_dict()
    expected = [k for k in loaded if k.startswith(("backbone.", "roi_heads.res5.", "roi_heads.postnorm."))]
    assert any(k.startswith("roi_heads.res5.halting.") for k in expected) == (head == "act")
    assert any(k.startswith("roi_heads.postnorm.") for k in expected) == (unit_type == "pre_activation")
    for key in expected:  # every feature-extractor and res5 weight comes from the classifier
        name = key.replace("roi_heads.res5.", "backbone.res5.").replace("roi_heads.postnorm.", "backbone.postnorm.")
        assert torch.equal(loaded[key], source[name]), key
    unused = next(r.getMessage() for r in caplog.records if "not used by the detector" in r.getMessage())
    assert "linear.weight" in unused and "linear.bias" in unused
    if head == "none":
        assert "backbone.res5.halting.0.global_logit.weight" in unused
    else:  # the ACT head uses the pooled term and the bias, not the spatial term and its norm
        assert "backbone.res5.halting.0.spatial_logit.weight" in unused
        assert "backbone.res5.halting.0.local_norm.weight" in unused
        assert "backbone.res5.halting.0.global_logit.weight" not in unused
    assert not any("backbone.res2" in part for part in unused.split(", "))


@pytest.fixture(scope="module")
def classifier_predictor():
    torch.manual_seed(0)
    return SACTPredictor(tiny_cls_cfg())


def test_visualize_ponder_on_a_classifier(classifier_predictor, synthetic_cls_root, tmp_path, monkeypatch):
    monkeypatch.setattr(visualize_ponder, "SACTPredictor", lambda cfg: classifier_predictor)
    images = [os.path.join(synthetic_cls_root, "val", name, f"{index:06d}.jpg") for index, name in
              ((0, "disc"), (1, "square"))]
    out = tmp_path / "out"
    status = visualize_ponder.main(["--config-file", config_path("synthetic/cls_sact_tiny.yaml"), "--input", *images,
                                    "--output", str(out), "--opts", "MODEL.DEVICE", "cpu"])
    assert status == 0
    rows = list(csv.DictReader(open(out / "ponder_summary.csv")))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert "num_detections" not in rows[0]
    top5 = [part.rsplit(" ", 1) for part in rows[0]["top5"].split("; ")]
    assert sorted(name for name, _ in top5) == sorted(CLS_CLASSES)
    assert sum(float(p) for _, p in top5) == pytest.approx(1.0, abs=0.01)
    for suffix in ("ponder", "blocks", "overlay"):
        assert os.path.getsize(out / f"000000_{suffix}.png") > 1000
    with pytest.raises(SystemExit):
        visualize_ponder.main(["--config-file", config_path("synthetic/cls_sact_tiny.yaml"),
                               "--video-input", images[0], "--output", str(out)])


def test_eval_saliency_accepts_a_classifier(classifier_predictor, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_saliency, "SACTPredictor", lambda cfg: classifier_predictor)
    write_cat2000(tmp_path / "cat2000")
    out = tmp_path / "out"
    status = eval_saliency.main(["--config-file", config_path("synthetic/cls_sact_tiny.yaml"),
                                 "--cat2000", str(tmp_path / "cat2000"), "--output", str(out),
                                 "--size", "64", "48", "--sigmas", "0", "--gammas", "0", "0.5", "--figures", "1",
                                 "--opts", "MODEL.DEVICE", "cpu"])
    assert status == 0
    report = json.load(open(out / "saliency.json"))
    assert report["overall"]["images"] == 6 and 0 <= report["overall"]["auc_judd"] <= 1
