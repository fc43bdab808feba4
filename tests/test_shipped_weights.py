"""The shipped tiny SACT classifier (``sact_det://synthetic_cls_sact_tiny.pth``):
found through the package, small, the file RESULTS.md gives the checksum of,
and the start of the demo detector, which it initialises completely."""
import hashlib
import os
import re

import pytest
import torch

from detectron2.modeling import build_model

from sact_det.config import get_config_file, get_sact_cfg, get_weights_file
from sact_det.config.model_zoo import WEIGHTS_ROOT
from sact_det.engine.checkpoint import SACTCheckpointer, save_weights_only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = "synthetic_cls_sact_tiny.pth"


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_shipped_classifier_is_small_and_its_checksum_is_in_results():
    path = get_weights_file("sact_det://" + SHIPPED)
    assert path == os.path.join(WEIGHTS_ROOT, SHIPPED) and os.path.getsize(path) <= 10 * 2**20
    with open(os.path.join(REPO, "RESULTS.md")) as f:
        recorded = re.findall(r"sha256 ([0-9a-f]{64})", f.read())
    assert sha256(path) in recorded


def test_unknown_weights_name_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match=SHIPPED):
        get_weights_file("sact_det://nope.pth")


def test_demo_detector_loads_every_weight_from_the_shipped_classifier():
    cfg = get_sact_cfg(get_config_file("synthetic/sact_tiny_from_cls.yaml"), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.WEIGHTS == "sact_det://" + SHIPPED
    detector = build_model(cfg)
    SACTCheckpointer(detector).load(cfg.MODEL.WEIGHTS)  # raises if a feature-extractor or res5 weight is missing
    source = torch.load(get_weights_file(SHIPPED), weights_only=True)["model"]
    loaded = detector.state_dict()
    for key in (k for k in loaded if k.startswith(("backbone.", "roi_heads.res5."))):
        assert torch.equal(loaded[key], source[key.replace("roi_heads.res5.", "backbone.res5.")]), key


def test_save_weights_only_drops_the_training_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": 9},
               tmp_path / "model_final.pth")
    digest = save_weights_only(str(tmp_path / "model_final.pth"), str(tmp_path / "weights.pth"))
    saved = torch.load(tmp_path / "weights.pth", weights_only=True)
    assert set(saved) == {"model"} and torch.equal(saved["model"]["weight"], model.weight)
    assert digest == sha256(str(tmp_path / "weights.pth"))
    # the same weights give the same bytes whatever the file is called (the checksum RESULTS.md records)
    assert save_weights_only(str(tmp_path / "model_final.pth"), str(tmp_path / "other_name.pth")) == digest


def test_pretrain_classifier_writes_weights_the_demo_detector_loads(synthetic_cls_root, tmp_path, monkeypatch):
    """``tools/train_demo.py --pretrain-classifier``, a few iterations on the small set."""
    from conftest import load_tool

    from sact_det.apps import train_demo

    monkeypatch.setattr(train_demo, "ensure_synthetic_cls", lambda: synthetic_cls_root)  # registered by the fixture
    output = tmp_path / "classifier.pth"
    small = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.IMS_PER_BATCH", "4", "INPUT.CLS.TRAIN_SIZE", "48",
             "INPUT.CLS.TEST_RESIZE", "55", "INPUT.CLS.TEST_SIZE", "48", "TEST.IMS_PER_BATCH", "4",
             "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
    run = tmp_path / "run"  # --output-dir, not the config's OUTPUT_DIR (which may hold a finished run to resume)
    assert load_tool("train_demo").main(
        ["--pretrain-classifier", "--output-dir", str(run), "--weights-output", str(output), *small]) == 0
    assert (run / "model_final.pth").is_file()
    saved = torch.load(output, weights_only=True)
    assert set(saved) == {"model"} and "linear.weight" in saved["model"]
    detector = build_model(get_sact_cfg(get_config_file("synthetic/sact_tiny_from_cls.yaml"), ["MODEL.DEVICE", "cpu"]))
    SACTCheckpointer(detector).load(str(output))  # raises if a feature-extractor or res5 weight is missing
    assert torch.equal(detector.state_dict()["backbone.stem.conv1.weight"], saved["model"]["backbone.stem.conv1.weight"])
