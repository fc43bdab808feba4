"""The SACT evaluator's statistics and report (sact_det.evaluation)."""
import json

import numpy as np
import pytest
import torch
from conftest import tiny_cfg

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from fvcore.nn import FlopCountAnalysis

from sact_det.engine.trainer import SACTTrainer
from sact_det.evaluation.evaluator import REPORT_FILE, SACTEvaluator


def evaluate(cfg, output_dir):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    evaluator = SACTEvaluator("synthetic_val", output_dir=str(output_dir), distributed=False)
    loader = SACTTrainer.build_test_loader(cfg, "synthetic_val")
    evaluator.reset()
    inputs_seen = []
    with torch.no_grad():
        for inputs in loader:
            evaluator.process(inputs, model(inputs))
            inputs_seen += inputs
    return evaluator.evaluate(), inputs_seen


def test_flops_statistics_match_independent_counts(synthetic_root, tmp_path):
    cfg = tiny_cfg("MODEL.SACT.TYPE", "none")
    results, inputs = evaluate(cfg, tmp_path)
    # Independent per-image counts: fvcore on Detectron2's own ResNet at each network input size.
    reference = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    expected = []
    for inp in inputs:
        counter = FlopCountAnalysis(reference, inp["image"][None].float())
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        expected.append(2 * counter.by_operator()["conv"])
    assert len(set(expected)) > 1  # images of different sizes
    assert results["sact"]["FLOPs"] == pytest.approx(np.mean(expected))
    assert results["sact"]["FLOPs_std"] == pytest.approx(np.std(expected))
    assert results["sact"]["FLOPs_pct"] == pytest.approx(100.0)
    report = json.load(open(tmp_path / REPORT_FILE))
    by_id = {r["image_id"]: r["flops"] for r in report["images"]}
    assert [by_id[inp["image_id"]] for inp in inputs] == expected


def test_report_fields(synthetic_root, tmp_path):
    results, inputs = evaluate(tiny_cfg(), tmp_path)
    metrics = results["sact"]
    assert set(metrics) == {"FLOPs", "FLOPs_std", "FLOPs_pct", "FLOPs_pct_std", "ponder_cost",
                            "ponder_cost_res2", "ponder_cost_res3", "ponder_cost_res4",
                            "units_res2", "units_res3", "units_res4", "object_AUC",
                            "object_AUC_res2", "object_AUC_res3", "object_AUC_res4",
                            "detector_FLOPs", "detector_FLOPs_pct",
                            "border_ratio_res2", "border_ratio_res3", "border_ratio_res4"}
    report = json.load(open(tmp_path / REPORT_FILE))
    assert report["dataset"] == "synthetic_val"
    summary = report["summary"]
    assert summary["num_images"] == len(DatasetCatalog.get("synthetic_val")) == len(inputs)
    for key in ("flops", "flops_pct", "dense_flops", "ponder_cost"):
        assert set(summary[key]) == {"mean", "std"}
    images = report["images"]
    assert {"image_id", "file_name", "image_size", "flops", "flops_pct", "dense_flops",
            "flops_per_block", "ponder_cost", "ponder_cost_per_block", "units_per_block",
            "num_detections", "object_auc", "rpn_flops", "box_head_flops", "detector_flops",
            "detector_flops_pct", "num_proposals"} <= set(images[0])
    assert all(r["detector_flops"] == r["flops"] + r["rpn_flops"] + r["box_head_flops"] for r in images)
    assert metrics["detector_FLOPs"] == pytest.approx(np.mean([r["detector_flops"] for r in images]))
    # Object agreement: every synthetic image has objects on a background.
    assert summary["object_auc"]["images"] == len(images)
    assert all(0 <= r["object_auc"] <= 1 for r in images)
    assert metrics["object_AUC"] == pytest.approx(np.mean([r["object_auc"] for r in images]))
    # Per block and per background type (the synthetic json records each image's background).
    backgrounds = {image["id"]: image["background"]
                   for image in json.load(open(MetadataCatalog.get("synthetic_val").json_file))["images"]}
    assert all(r["background"] == backgrounds[r["image_id"]] for r in images)
    agreement = summary["agreement"]
    assert set(agreement) == {"all"} | set(backgrounds.values())
    for block in ("res2", "res3", "res4"):
        values = [r["object_auc_per_block"][block] for r in images if r["object_auc_per_block"][block] is not None]
        assert values and agreement["all"]["per_block"][block]["mean"] == pytest.approx(np.mean(values))
        on_objects = [r["ponder_on_objects"][block] for r in images if r["ponder_on_objects"][block] is not None]
        assert agreement["all"]["ponder_on_objects"][block]["mean"] == pytest.approx(np.mean(on_objects))
    for background in set(backgrounds.values()):
        group = [r["object_auc"] for r in images if r["background"] == background]
        assert agreement[background]["object_auc"]["mean"] == pytest.approx(np.mean(group))
    per_image = [r["ponder_cost"] for r in images]
    assert summary["ponder_cost"]["mean"] == pytest.approx(np.mean(per_image))
    assert metrics["ponder_cost"] == pytest.approx(
        sum(metrics[f"ponder_cost_res{k}"] for k in (2, 3, 4)))
    # Border ratio per block (ring / interior of each image's map), averaged over images.
    for block in ("res2", "res3", "res4"):
        values = [r["border_ratio_per_block"][block] for r in images]
        assert metrics[f"border_ratio_{block}"] == pytest.approx(np.mean(values)) and all(v > 0 for v in values)
    # The per-block FLOPs add up to the total.
    assert all(sum(r["flops_per_block"].values()) == r["flops"] for r in images)


def test_act_head_units_and_halting_shares_in_the_report(synthetic_root, tmp_path):
    cfg = tiny_cfg("MODEL.SACT.RES5_NUM_UNITS", "3", "MODEL.SACT.HEAD_TYPE", "act")
    results, _ = evaluate(cfg, tmp_path)
    summary = json.load(open(tmp_path / REPORT_FILE))["summary"]
    assert 1 <= results["sact"]["head_units"] <= 3 and results["sact"]["head_units"] == summary["head_units"]["mean"]
    assert len(summary["head_halting_shares"]) == 3 and sum(summary["head_halting_shares"]) == pytest.approx(1)
