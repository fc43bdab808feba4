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
from sact_det.evaluation.evaluator import REPORT_FILE, SACTEvaluator, flat_metrics, format_summary, summarize_records
from sact_det.evaluation.metrics import object_agreement
from sact_det.modeling.report import SACTReport


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
    per_block = ("ponder_cost", "units", "object_AUC", "border_ratio", "units_on_objects", "units_on_background",
                 "ponder_on_objects", "ponder_on_background")
    assert {key for key in metrics if not key.startswith("units_on_style_")} == {
        "FLOPs", "FLOPs_std", "FLOPs_pct", "FLOPs_pct_std", "ponder_cost", "object_AUC", "detector_FLOPs",
        "detector_FLOPs_pct"} | {f"{name}_res{k}" for name in per_block for k in (2, 3, 4)}
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
        on_background = [r["units_on_background"][block] for r in images
                         if r["units_on_background"][block] is not None]
        assert metrics[f"units_on_background_{block}"] == pytest.approx(np.mean(on_background))
    # Per kind of object: the synthetic annotations record each object's appearance.
    styles = {a["style"] for a in json.load(open(MetadataCatalog.get("synthetic_val").json_file))["annotations"]}
    assert set(summary["per_style"]) == styles == {style for r in images for style in r["units_on_style"]}
    assert {key for key in metrics if key.startswith("units_on_style_")} == {
        f"units_on_style_{style}_{block}" for style, values in summary["per_style"].items()
        for block, stats in values["units"].items() if stats}
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


def hand_built_report(units: torch.Tensor, strides) -> SACTReport:
    """A 32x48 image's report with the given units maps (per block) and ponder maps 0.5 above them."""
    ponder = {block: u.float() + 0.5 for block, u in units.items()}
    return SACTReport(image_size=(32, 48), flops=1, flops_per_block={}, dense_flops=2,
                      units_per_block={block: float(u.float().mean()) for block, u in units.items()},
                      units_maps=units, ponder_maps=ponder, ponder_strides=strides, ponder_map=ponder["res4"],
                      ponder_map_stride=strides["res4"], ponder_cost=1.0, ponder_cost_per_block={"res4": 1.0},
                      border_ratio_per_block={"res4": None})


def objects_at(*boxes) -> np.ndarray:
    mask = np.zeros((32, 48), dtype=bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def test_units_and_ponder_cost_on_objects_background_and_each_kind_of_object():
    units = torch.ones(4, 6, dtype=torch.int64)  # res4: 8-pixel cells
    units[0:2, 0:2], units[3, 5] = 3, 2
    coarse = torch.ones(2, 3, dtype=torch.int64)  # 16-pixel cells
    coarse[0, 0] = 4
    report = hand_built_report({"res4": units, "res5": coarse}, {"res4": 8, "res5": 16})
    flat, textured = objects_at((0, 16, 0, 16)), objects_at((24, 32, 40, 48))  # cells (0:2, 0:2) and (3, 5) of res4
    result = object_agreement(report, flat | textured, {"flat": flat, "fine_noise": textured})
    assert result["object_auc_per_block"]["res4"] == 1.0
    assert result["units_on_objects"]["res4"] == pytest.approx((4 * 3 + 2) / 5)
    assert result["units_on_background"]["res4"] == 1.0
    assert result["ponder_on_objects"]["res4"] == pytest.approx((4 * 3.5 + 2.5) / 5)
    assert result["ponder_on_background"]["res4"] == 1.5
    assert result["units_on_style"] == {"flat": {"res4": 3.0, "res5": 4.0}, "fine_noise": {"res4": 2.0, "res5": None}}
    assert result["ponder_on_style"]["fine_noise"] == {"res4": 2.5, "res5": None}  # a quarter of a res5 cell
    assert result["units_on_objects"]["res5"] == 4.0 and result["units_on_background"]["res5"] == 1.0


def test_per_style_summary_table_and_metrics():
    units = torch.ones(4, 6, dtype=torch.int64)
    units[0:2, 0:2], units[3, 5] = 3, 2
    first = hand_built_report({"res4": units}, {"res4": 8})
    units = torch.full((4, 6), 2, dtype=torch.int64)
    units[0:2, 0:2] = 4
    second = hand_built_report({"res4": units}, {"res4": 8})
    flat, textured = objects_at((0, 16, 0, 16)), objects_at((24, 32, 40, 48))
    records = [dict(first.record(), **object_agreement(first, flat | textured, {"flat": flat, "fine_noise": textured})),
               dict(second.record(), **object_agreement(second, flat, {"flat": flat}))]  # no textured object
    summary = summarize_records(records)
    per_style = summary["per_style"]
    assert per_style["flat"]["units"]["res4"] == {"mean": 3.5, "std": 0.5, "images": 2}
    assert per_style["fine_noise"]["units"]["res4"] == {"mean": 2.0, "std": 0.0, "images": 1}
    assert per_style["fine_noise"]["ponder"]["res4"]["mean"] == 2.5
    assert summary["agreement"]["all"]["units_on_background"]["res4"]["mean"] == 1.5
    text = format_summary(summary)
    assert "| objects            |        2 | 3.40 (3.90) |" in text  # (2.8 + 4) / 2 units
    assert "| background         |        2 | 1.50 (2.00) |" in text
    assert "| flat objects       |        2 | 3.50 (4.00) |" in text
    assert "| fine_noise objects |        1 | 2.00 (2.50) |" in text
    metrics = flat_metrics(summary)
    assert metrics["units_on_objects_res4"] == pytest.approx(3.4) and metrics["units_on_background_res4"] == 1.5
    assert metrics["ponder_on_objects_res4"] == pytest.approx(3.9) and metrics["ponder_on_background_res4"] == 2.0
    assert metrics["units_on_style_flat_res4"] == 3.5 and metrics["units_on_style_fine_noise_res4"] == 2.0
