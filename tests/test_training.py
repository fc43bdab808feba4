"""Training, evaluation, resuming and failure handling on the synthetic COCO data."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, StopAfter, config_path, tiny_cfg

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase, default_argument_parser
from detectron2.modeling import build_model

from sact_det import get_sact_cfg
from sact_det.engine.train_net import main
from sact_det.engine.trainer import SACTTrainer, TrainingDivergedError


def train_cfg(output_dir, *opts):
    return tiny_cfg("OUTPUT_DIR", str(output_dir), "SOLVER.WARMUP_ITERS", "2", *opts)


class PoisonAt(HookBase):
    """Puts NaN into a backbone weight after ``iteration`` (a diverging update)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            with torch.no_grad():
                self.trainer.model.backbone.res3.units[0].conv2.weight.fill_(float("nan"))


def test_training_logs_a_finite_ponder_loss(synthetic_root, tmp_path):
    trainer = SACTTrainer(train_cfg(tmp_path, "SOLVER.MAX_ITER", "3"))
    trainer.resume_or_load(resume=False)
    trainer.train()
    histories = trainer.storage.histories()
    ponder = histories["loss_ponder"].values()
    assert len(ponder) == 3 and all(math.isfinite(v) and v > 0 for v, _ in ponder)
    for key in ("sact/ponder_cost/res4", "sact/ponder_cost/total", "sact/units/res2"):
        assert key in histories
    # tau * sum_k rho_k: with tau = 0.01 and every unit still running at init (b = -3),
    # each block's ponder cost is its unit count plus the remainder.
    total = histories["sact/ponder_cost/total"].values()[0][0]
    assert ponder[0][0] == pytest.approx(0.01 * total, rel=1e-4)
    assert 3 + 4 + 6 < total <= 3 + 4 + 6 + 3
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any("loss_ponder" in m and "sact/units/res4" in m for m in metrics)
    # Evaluation at the end of training, on both validation splits.
    for dataset in ("synthetic_val", "synthetic_val_heldout"):
        assert any(f"{dataset}/sact/FLOPs" in m and f"{dataset}/bbox/AP" in m for m in metrics)


def test_eval_only_reports_boxes_and_per_image_flops(synthetic_root, tmp_path):
    cfg = train_cfg(tmp_path, "SOLVER.MAX_ITER", "2")
    trainer = SACTTrainer(cfg)
    trainer.train()
    weights = str(tmp_path / "model_final.pth")
    args = default_argument_parser().parse_args(
        ["--config-file", config_path("synthetic/sact_tiny.yaml"), "--eval-only",
         *sum([[k, v] for k, v in zip(cfg_opts(cfg)[::2], cfg_opts(cfg)[1::2])], []),
         "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "eval")])
    results = main(args)
    assert set(results) == {"synthetic_val", "synthetic_val_heldout"}
    for dataset_results in results.values():
        assert set(dataset_results["bbox"]) >= {"AP", "AP50", "AP75"}
        assert dataset_results["sact"]["FLOPs"] > 0 and 0 < dataset_results["sact"]["FLOPs_pct"] < 200
    report = json.load(open(tmp_path / "eval" / "inference" / "synthetic_val" / "sact_report.json"))
    assert report["summary"]["num_images"] == 4 == len(report["images"])
    assert all(r["flops"] > 0 and r["num_detections"] is not None for r in report["images"])
    # The model returns boxes and its SACT outputs for every image.
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        output = model([{"image": torch.rand(3, 120, 160) * 255}])[0]
    assert len(output["instances"]) > 0 and output["instances"].pred_boxes.tensor.shape[1] == 4
    assert output["sact"].flops > 0 and output["sact"].ponder_map.shape == (30, 40)


def cfg_opts(cfg):
    """The test-size overrides of tiny_cfg, as command-line KEY VALUE pairs."""
    return ["INPUT.MIN_SIZE_TEST", str(cfg.INPUT.MIN_SIZE_TEST), "INPUT.MAX_SIZE_TEST",
            str(cfg.INPUT.MAX_SIZE_TEST), "MODEL.RPN.POST_NMS_TOPK_TEST",
            str(cfg.MODEL.RPN.POST_NMS_TOPK_TEST), "DATALOADER.NUM_WORKERS", "0"]


def test_resume_continues_iterations_and_weights(synthetic_root, tmp_path):
    cfg = train_cfg(tmp_path, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2")
    first = SACTTrainer(cfg)
    first.register_hooks([StopAfter(4)])
    with pytest.raises(KeyboardInterrupt):
        first.train()
    saved = torch.load(tmp_path / "model_0000003.pth", weights_only=False)
    assert saved["iteration"] == 3
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_0000003.pth"

    second = SACTTrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 4
    for key, value in saved["model"].items():
        assert torch.equal(second.model.state_dict()[key], value), key
    assert second.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 4
    assert second.optimizer.state_dict()["state"]  # momentum buffers restored
    second.train()
    assert second.iter == 6  # Detectron2 sets iter = max_iter once training finished
    assert os.path.exists(tmp_path / "model_final.pth")
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["iteration"] == 5
    changed = [k for k, v in final["model"].items()
               if v.is_floating_point() and not torch.equal(v, saved["model"][k])]
    assert changed  # training went on from the resumed weights


def test_divergence_stops_with_the_last_good_checkpoint(synthetic_root, tmp_path):
    cfg = train_cfg(tmp_path, "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2")
    trainer = SACTTrainer(cfg)
    trainer.register_hooks([PoisonAt(2)])
    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    message = str(error.value)
    assert "diverged at iteration 3" in message and "model_0000001.pth" in message
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_0000001.pth"
    good = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())
    assert not os.path.exists(tmp_path / "model_0000003.pth")


def test_unreadable_training_image_is_skipped_and_named(synthetic_root, tmp_path, caplog):
    from sact_det.data.mapper import ReportingDatasetMapper

    cfg = train_cfg(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    record = {"file_name": str(bad), "height": 10, "width": 10, "image_id": 1, "annotations": []}
    assert ReportingDatasetMapper(cfg, True)(dict(record)) is None
    assert "broken.jpg" in caplog.text
    with pytest.raises(OSError, match="could not read image .*broken.jpg"):
        ReportingDatasetMapper(cfg, False)(dict(record))


def test_missing_dataset_and_config_typo_are_named(tmp_path):
    from detectron2.data.datasets import register_coco_instances

    from sact_det.data import check_datasets_exist

    register_coco_instances("missing_coco_val", {}, str(tmp_path / "nope.json"), str(tmp_path / "img"))
    with pytest.raises(FileNotFoundError, match="missing_coco_val.*nope.json.*datasets/README.md"):
        check_datasets_exist(["missing_coco_val"])
    with pytest.raises(KeyError, match="not registered"):
        check_datasets_exist(["coco_2071_val"])
    with pytest.raises(KeyError, match="MODEL.SACT.TAUU in the command-line overrides; "
                                       "did you mean MODEL.SACT.TAU"):
        tiny_cfg("MODEL.SACT.TAUU", "0.1")
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"_BASE_: {config_path('synthetic/sact_tiny.yaml')}\nMODEL:\n  SACT:\n    EPSILON: 0.1\n")
    with pytest.raises(KeyError, match=f"MODEL.SACT.EPSILON in config file {typo}"):
        get_sact_cfg(str(typo))


def test_two_process_training_on_cpu(synthetic_root, tmp_path):
    """--num-gpus 2 through Detectron2's launch (gloo on CPUs): DistributedDataParallel
    runs without an unused-parameter search because every parameter is used."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"),
           "--config-file", config_path("synthetic/sact_tiny.yaml"), "--num-gpus", "2",
           "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
           "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
           "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "DATALOADER.NUM_WORKERS", "0",
           "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "model_final.pth")
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert metrics[-1]["iteration"] == 2 and math.isfinite(metrics[-1]["loss_ponder"])
