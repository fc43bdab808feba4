"""The block-4 box head (sact_det.modeling.roi_heads): ACT over proposals, whole-detector FLOPs."""
import copy
import logging
import math

import pytest
import torch
from conftest import tiny_cfg

from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.analysis import FlopCountAnalysis
from detectron2.utils.events import EventStorage

from sact_det.engine.checkpoint import SACTCheckpointer


def act_head_model(*opts, spread=2.0, seed=0):
    """A tiny detector with a three-unit ACT box head whose halting logits
    spread around 0 over the proposals of :func:`images`: they halt after
    different units (the halting weights are scaled on the features they read)."""
    cfg = tiny_cfg("MODEL.SACT.RES5_NUM_UNITS", "3", "MODEL.SACT.HEAD_TYPE", "act",
                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *opts)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    pooled = []
    hooks = [b.register_forward_pre_hook(lambda m, args: pooled.append(args[0].mean((2, 3))))
             for b in model.roi_heads.res5.halting]
    for branch in model.roi_heads.res5.halting:
        branch.bias.data.fill_(-20.0)  # every unit runs while the features are recorded
    run(model, "dense", images())
    for hook in hooks:
        hook.remove()
    for branch, features in zip(model.roi_heads.res5.halting, pooled):
        direction = torch.randn(features.shape[1])
        projection = features @ direction
        scale = spread / projection.std()
        branch.global_logit.weight.data.copy_((direction * scale)[None])
        branch.bias.data.fill_(float(-projection.mean() * scale))
    return model


def images(count=2):
    torch.manual_seed(7)
    return [{"image": torch.rand(3, 96 + 16 * i, 128) * 255} for i in range(count)]


def run(model, execution, inputs):
    model.backbone.execution = model.roi_heads.execution = execution
    with torch.no_grad():
        return model(copy.deepcopy(inputs))


def assert_same_detections(dense, gathered, atol=1e-4):
    for d, g in zip(dense, gathered):
        assert len(d["instances"]) == len(g["instances"]) > 0
        assert torch.allclose(d["instances"].scores, g["instances"].scores, atol=atol)
        assert torch.allclose(d["instances"].pred_boxes.tensor, g["instances"].pred_boxes.tensor, atol=1e-2)
        assert torch.equal(d["instances"].head_units, g["instances"].head_units)
        assert d["sact"].box_head_flops == g["sact"].box_head_flops


@pytest.mark.parametrize("backbone_type", ["sact", "act", "none"])
def test_gathered_head_gives_the_masked_heads_detections(backbone_type):
    model = act_head_model("MODEL.SACT.TYPE", backbone_type)
    inputs = images()
    dense, gathered = run(model, "dense", inputs), run(model, "perforated", inputs)
    assert_same_detections(dense, gathered)
    report = dense[0]["sact"]
    shares = report.head_halting_shares
    assert len(shares) == 3 and sum(shares) == pytest.approx(1.0) and max(shares) < 1  # mixed halting
    assert 1 < report.head_units < 3
    assert report.box_head_flops < report.box_head_dense_flops and report.detector_flops_pct < 100 + 1e-6 or \
        backbone_type == "sact"  # (a SACT backbone at init runs every unit plus its halting branches)
    units = dense[0]["instances"].head_units
    assert units.min() >= 1 and units.max() <= 3


def test_a_proposal_at_the_threshold_is_the_only_one_that_may_differ():
    """Force one proposal's cumulative halting score onto 1 - eps: only its
    units (and its detections) may differ between the two executions."""
    model = act_head_model("MODEL.SACT.TYPE", "none")
    head = model.roi_heads
    features = {"res4": torch.randn(1, 256, 8, 10)}
    proposals = Instances((128, 160))
    proposals.proposal_boxes = Boxes(torch.tensor([[0, 0, 64, 64], [20, 30, 90, 100.0], [50, 10, 150, 80]]))
    proposals.objectness_logits = torch.zeros(3)
    pooled = head.pooler([features["res4"]], [proposals.proposal_boxes])
    with torch.no_grad():
        first = head.res5.units[0](pooled)
        branch = head.res5.halting[0]
        logit = branch.global_logit(first.mean((2, 3)))[:, 0]
        # proposal 1 exactly at the threshold after the first unit
        branch.bias.fill_(float(torch.logit(torch.tensor(1 - head.res5.eps, dtype=torch.float64))) - float(logit[1]))
    outputs = {}
    for execution in ("dense", "perforated"):
        head.execution = execution
        with torch.no_grad():
            instances, reports = head(None, features, [proposals])
        outputs[execution] = reports[0].units
    flipped = outputs["dense"] != outputs["perforated"]
    assert not flipped[[0, 2]].any()  # away from the threshold: the same units


def test_zero_and_one_proposal():
    model = act_head_model("MODEL.SACT.TYPE", "none")
    head = model.roi_heads
    features = {"res4": torch.randn(1, 256, 8, 10)}
    for boxes in (torch.zeros(0, 4), torch.tensor([[10, 10, 60, 50.0]])):
        proposals = Instances((128, 160), proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(len(boxes)))
        results = {}
        for execution in ("dense", "perforated"):
            head.execution = execution
            with torch.no_grad():
                instances, reports = head(None, features, [proposals])
            results[execution] = (instances[0], reports[0])
            assert reports[0].num_proposals == len(boxes)
            assert reports[0].flops == (0 if len(boxes) == 0 else reports[0].flops) >= 0
        assert len(results["dense"][0]) == len(results["perforated"][0])
        assert results["dense"][1].flops == results["perforated"][1].flops


def test_training_adds_the_heads_ponder_loss_and_uses_every_parameter():
    model = act_head_model("MODEL.SACT.HEAD_TAU", "0.05").train()
    inputs = images()
    for item in inputs:
        item["instances"] = Instances(item["image"].shape[1:], gt_boxes=Boxes(torch.tensor([[10, 10, 60, 70.0]])),
                                      gt_classes=torch.tensor([1]))
    with EventStorage():
        losses = model(inputs)
        storage_units = None
    assert "loss_ponder_head" in losses and math.isfinite(losses["loss_ponder_head"].item())
    # tau_head * mean rho, rho in [1, 4] for three units (N + R)
    assert 0.05 * 1 <= losses["loss_ponder_head"].item() <= 0.05 * 4
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    del storage_units


def test_dense_detector_flops_equal_fvcore_conv_and_linear_times_two():
    cfg = tiny_cfg("MODEL.SACT.TYPE", "none", "MODEL.SACT.RES5_NUM_UNITS", "3", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    reference_cfg = cfg.clone()
    reference_cfg.defrost()
    reference_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    reference_cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    reference_cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"  # Detectron2's own R-C4 head
    reference = build_model(reference_cfg).eval()
    assert not reference.load_state_dict(ours.state_dict(), strict=False).missing_keys
    inputs = [{"image": torch.rand(3, 96, 128) * 255}]
    with torch.no_grad():
        report = ours(copy.deepcopy(inputs))[0]["sact"]
    counter = FlopCountAnalysis(reference, inputs)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_operator = counter.by_operator()
    assert report.num_proposals > 0
    assert report.detector_flops == 2 * (by_operator["conv"] + by_operator["linear"])
    assert report.detector_flops_pct == pytest.approx(100.0)
    assert report.flops + report.rpn_flops + report.box_head_flops == report.detector_flops


def test_bad_head_configs_name_the_key():
    with pytest.raises(ValueError, match="MODEL.SACT.HEAD_TYPE"):
        tiny_cfg("MODEL.SACT.HEAD_TYPE", "sact")
    with pytest.raises(ValueError, match="MODEL.SACT.HEAD_TAU"):
        tiny_cfg("MODEL.SACT.HEAD_TAU", "-0.1")
    with pytest.raises(ValueError, match="MODEL.SACT.RES5_NUM_UNITS"):
        tiny_cfg("MODEL.SACT.HEAD_TYPE", "act")  # the tiny config's res5 has one unit


def test_checkpoint_without_head_halting_loads_and_names_them(tmp_path, caplog):
    plain = build_model(tiny_cfg("MODEL.SACT.RES5_NUM_UNITS", "3"))
    path = tmp_path / "plain_head.pth"
    torch.save({"model": plain.state_dict()}, path)
    model = act_head_model()
    with caplog.at_level(logging.INFO):
        SACTCheckpointer(model).load(str(path))
    assert "roi_heads.res5.halting.0.bias" in caplog.text and "newly initialised" in caplog.text
    assert torch.equal(model.roi_heads.res5.units[2].conv3.weight, plain.roi_heads.res5.units[2].conv3.weight)
