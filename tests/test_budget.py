"""The test-time compute knob (MODEL.SACT.TEST_HALTING_OFFSET) and the FLOPs budget search."""
import numpy as np
import pytest
import torch
from conftest import REPO, tiny_cfg

from detectron2.modeling import build_model

from sact_det.apps.budget import BudgetError, run_budget_search
from sact_det.modeling.report import build_reports
from sact_det.modeling.sact.halting import set_test_halting_offset


def mixed_model(*opts):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts)).eval()
    for stage in model.backbone.stages:  # a mixed halting pattern
        for branch in stage.halting:
            branch.bias.data.fill_(-0.5)
            branch.spatial_logit.weight.data.normal_(0, 0.05)
    return model


def mean_flops_pct(backbone, images):
    values = []
    with torch.no_grad():
        for x in images:
            _, outputs = backbone.forward_with_sact(x, [tuple(x.shape[-2:])])
            values.append(build_reports(backbone, outputs, [tuple(x.shape[-2:])])[0].flops_pct)
    return float(np.mean(values))


def test_offset_lowers_flops_in_every_execution_and_not_in_training():
    backbone = mixed_model("MODEL.SACT.TILE_SIZE", "2").backbone
    torch.manual_seed(1)
    images = [torch.randn(1, 3, 96, 128), torch.randn(1, 3, 112, 144)]
    offsets = [-8.0, -2.0, 0.0, 2.0, 8.0]
    curves = {}
    for execution in ("dense", "perforated", "tiled"):
        backbone.execution = execution
        curves[execution] = []
        for offset in offsets:
            set_test_halting_offset(backbone, offset)
            curves[execution].append(mean_flops_pct(backbone, images))
    assert all(a > b for a, b in zip(curves["dense"], curves["dense"][1:]))  # strictly decreasing
    assert curves["dense"][0] - curves["dense"][-1] > 40  # percentage points
    assert curves["perforated"] == pytest.approx(curves["dense"]) == curves["tiled"]
    # Training ignores the offset: the ponder cost is that of offset 0.
    backbone.train()
    with torch.no_grad():
        set_test_halting_offset(backbone, 4.0)
        shifted = backbone.forward_with_sact(images[0])[1]["res3"].ponder_cost()
        set_test_halting_offset(backbone, 0.0)
        plain = backbone.forward_with_sact(images[0])[1]["res3"].ponder_cost()
    assert torch.equal(shifted, plain)


def test_the_config_key_sets_every_branch_and_rejects_bad_values():
    model = build_model(tiny_cfg("MODEL.SACT.TEST_HALTING_OFFSET", "1.5"))
    branches = [b for stage in model.backbone.stages for b in stage.halting]
    assert branches and all(b.test_offset == 1.5 for b in branches)
    with pytest.raises(ValueError, match="MODEL.SACT.TEST_HALTING_OFFSET"):
        tiny_cfg("MODEL.SACT.TEST_HALTING_OFFSET", "1e999")  # inf
    with pytest.raises(ValueError, match="MODEL.SACT.TEST_HALTING_OFFSET"):
        tiny_cfg("MODEL.SACT.TEST_HALTING_OFFSET", "abc")


def test_budget_search_reaches_the_target_or_states_the_range(synthetic_root, tmp_path, capsys):
    model = mixed_model()
    weights = tmp_path / "mixed.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg = tiny_cfg("MODEL.WEIGHTS", str(weights))
    best, points = run_budget_search(cfg, 60.0, "synthetic_val", tolerance=1.0)
    assert abs(best.flops_pct - 60.0) <= 1.0 and best.ap is not None
    by_offset = sorted(points, key=lambda p: p.offset)
    assert by_offset[0].offset == -20 and by_offset[-1].offset == 20
    assert all(a.flops_pct >= b.flops_pct for a, b in zip(by_offset, by_offset[1:]))
    with pytest.raises(BudgetError, match=r"out of reach: .*% \(offset 20.*\) to .*% \(offset -20"):
        run_budget_search(cfg, 5.0, "synthetic_val")
    # The tool prints the table it went through and the offset to use.
    import sys
    sys.path.insert(0, f"{REPO}/tools")
    import halting_budget

    status = halting_budget.main(["--config-file", f"{REPO}/configs/synthetic/sact_tiny.yaml",
                                  "--target-flops", "60", "--tolerance", "1", "--opts", *cfg_overrides(cfg)])
    out = capsys.readouterr().out
    assert status == 0 and "FLOPs % of dense" in out and "use: MODEL.SACT.TEST_HALTING_OFFSET" in out
    # One line per search step, not the evaluators' tables (issue 24, item 6); --verbose adds them.
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert steps[0].startswith("step 1: offset -20.0000: FLOPs ") and steps[1].startswith("step 2: offset +20.0000")
    assert "Average Precision" not in out and "SACT evaluation on" not in out
    assert len(out.splitlines()) <= len(steps) * 2 + 6  # the steps, the table by offset, the answer
    halting_budget.main(["--config-file", f"{REPO}/configs/synthetic/sact_tiny.yaml", "--target-flops", "60",
                         "--tolerance", "1", "--verbose", *cfg_overrides(cfg)])  # trailing overrides
    assert "Average Precision" in capsys.readouterr().out


def cfg_overrides(cfg):
    return ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS, "INPUT.MIN_SIZE_TEST",
            str(cfg.INPUT.MIN_SIZE_TEST), "INPUT.MAX_SIZE_TEST", str(cfg.INPUT.MAX_SIZE_TEST),
            "MODEL.RPN.POST_NMS_TOPK_TEST", str(cfg.MODEL.RPN.POST_NMS_TOPK_TEST), "DATALOADER.NUM_WORKERS", "0"]
