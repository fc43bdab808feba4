"""The halting branch's options (MODEL.SACT.HALTING_NORM, HALTING_PADDING), their
sparse execution (norms folded; replicate padding and pre-activation units
refused), and the border ratio in the report and the evaluator's summary."""
import pytest
import torch
from conftest import tiny_cfg, tiny_cls_cfg
from test_sparse import assert_same, make_stage, run_dense
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone

from sact_det.evaluation.evaluator import flat_metrics, format_summary, summarize_records
from sact_det.modeling.maps import border_ratio
from sact_det.modeling.report import build_reports
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage
from sact_det.modeling.sact.halting import HaltingBranch
from sact_det.modeling.sparse import SparseStageExecutor
from sact_det.modeling.sparse.head import GatheredHeadExecutor


def random_norm(channels: int) -> nn.Module:
    norm = FrozenBatchNorm2d(channels)
    norm.weight.uniform_(0.5, 1.5)
    norm.bias.normal_(0, 0.5)
    norm.running_mean.normal_(0, 0.5)
    norm.running_var.uniform_(0.5, 2.0)
    return norm


def branch(channels=6, spatial=True, norm=None, padding="zeros", seed=0):
    torch.manual_seed(seed)
    result = HaltingBranch(channels, spatial=spatial, norm=norm, padding=padding).eval()
    result.global_logit.weight.data.normal_(0, 0.5)
    if spatial:
        result.spatial_logit.weight.data.normal_(0, 0.5)
    return result


def test_norm_is_the_authors_branch():
    sact = branch(norm=random_norm)
    assert isinstance(sact.local_norm, FrozenBatchNorm2d) and isinstance(sact.global_norm, FrozenBatchNorm2d)
    act = branch(spatial=False, norm=random_norm)
    assert act.local_norm is None and act.global_norm is not None
    assert branch().local_norm is None and branch().global_norm is None  # eq. (14) as printed
    x = torch.randn(2, 6, 5, 7)
    # sigmoid(W~ * BN_l(x) + W BN_g(pool(x)) + b), zero padding of BN_l(x)
    local = F.conv2d(sact.local_norm(x), sact.spatial_logit.weight, padding=1)
    pooled = sact.global_norm(x.mean((2, 3))[:, :, None, None])[:, :, 0, 0]
    expected = torch.sigmoid(local + (pooled @ sact.global_logit.weight.t() + sact.bias)[:, :, None, None])
    assert torch.allclose(sact(x), expected, atol=1e-6)


def test_pooled_norm_reads_each_images_own_positions():
    """Training: the global batch norm's statistics are those of the masked
    means (padding excluded); inference: a padded image scores as alone."""
    torch.manual_seed(0)
    train = HaltingBranch(4, spatial=True, norm=nn.BatchNorm2d).train()
    x = torch.rand(2, 4, 6, 6) + 1
    valid = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    valid[1, :, 3:, :] = False
    x = x * valid
    train(x, valid)
    masked_means = torch.stack([x[0].mean((1, 2)), x[1, :, :3, :].mean((1, 2))])
    assert torch.allclose(train.global_norm.running_mean, 0.1 * masked_means.mean(0), atol=1e-6)
    test = branch(channels=4, norm=random_norm, seed=1)
    for padding in ("zeros", "replicate"):
        test.padding = test.spatial_logit.padding_mode = padding
        batched = test(x, valid)
        assert torch.allclose(batched[1, :, :3], test(x[1:, :, :3])[0], atol=1e-6)


def test_replicate_padding_repeats_the_border():
    zeros, replicate = branch(), branch(padding="replicate")
    replicate.load_state_dict(zeros.state_dict())
    x = torch.randn(1, 6, 1, 1).expand(1, 6, 5, 7).contiguous()  # the same features everywhere
    logits = torch.logit(replicate(x))
    assert torch.allclose(logits, logits[0, 0, 2, 3].expand_as(logits), atol=1e-5)  # border = interior
    zero_logits = torch.logit(zeros(x))
    assert torch.allclose(zero_logits[..., 1:-1, 1:-1], logits[..., 1:-1, 1:-1], atol=1e-5)
    assert not torch.allclose(zero_logits[..., 0, :], logits[..., 0, :], atol=1e-3)  # zeros: the ring differs
    y = torch.randn(1, 6, 5, 7)
    expected = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), replicate.spatial_logit.weight)
    assert torch.allclose(torch.logit(replicate(y)) - torch.logit(zeros(y)),
                          expected - F.conv2d(y, zeros.spatial_logit.weight, padding=1), atol=1e-4)
    with pytest.raises(ValueError, match="halting padding must be one of"):
        HaltingBranch(6, spatial=True, padding="reflect")


def with_halting_norm(stage: AdaptiveStage) -> AdaptiveStage:
    """The stage's halting branches with the authors' (frozen, random) batch norms."""
    for index, old in enumerate(stage.halting):
        new = HaltingBranch(old.global_logit.in_features, spatial=old.spatial, norm=random_norm).eval()
        new.load_state_dict(old.state_dict(), strict=False)
        stage.halting[index] = new
    return stage


@pytest.mark.parametrize("halting_type,padded", [("sact", False), ("sact", True), ("act", True)])
def test_sparse_execution_folds_the_halting_norms(halting_type, padded):
    stage = with_halting_norm(make_stage(halting_type, spatial_std=0.5, seed=3))
    input_valid = torch.ones(2, 1, 22, 26, dtype=torch.bool)
    if padded:
        input_valid[1, :, 13:, :] = False
    x = torch.randn(2, 16, 22, 26) * input_valid
    dense = run_dense(stage, x, input_valid if padded else None)
    assert dense.num_units_map.min() < dense.num_units_map.max() or halting_type == "act"
    for max_active in (2.0, 0.8):  # every unit sparse; dense units above 80 %
        assert_same(dense, SparseStageExecutor(stage, "perforated", max_active)(x, input_valid if padded else None))


def test_act_box_head_executor_folds_the_global_norm():
    stage = with_halting_norm(make_stage("act", num_units=3, seed=4))
    for halting in stage.halting:
        halting.global_logit.weight.data.normal_(0, 1.0)
        halting.bias.data.fill_(1.0)
    pooled = torch.randn(6, 16, 8, 8) * torch.linspace(0.2, 3, 6).view(6, 1, 1, 1)
    out = stage(pooled)
    features, units, finite = GatheredHeadExecutor(stage)(pooled)
    assert torch.equal(units, out.num_units_map[:, 0, 0]) and bool(finite)
    assert units.min() < units.max()
    assert torch.allclose(features, out.features.mean((2, 3)), atol=1e-4)


@pytest.mark.parametrize("key,value", [("MODEL.SACT.UNIT_TYPE", "pre_activation"),
                                       ("MODEL.SACT.HALTING_PADDING", "replicate")])
def test_sparse_execution_refuses_what_it_cannot_run(key, value):
    with pytest.raises(ValueError, match=f"does not support {key} {value}.*use MODEL.SACT.EXECUTION dense"):
        tiny_cfg(key, value, "MODEL.SACT.EXECUTION", "perforated")
    tiny_cfg(key, value)  # dense: fine
    tiny_cfg("MODEL.SACT.TYPE", "act", "MODEL.SACT.HALTING_PADDING", "replicate", "MODEL.SACT.EXECUTION", "perforated")
    tiny_cfg("MODEL.SACT.HALTING_NORM", "True", "MODEL.SACT.EXECUTION", "tiled", "MODEL.SACT.TILE_SIZE", "2")
    # Switched at run time (backbone.execution), the executors refuse with the same advice.
    backbone = build_backbone(tiny_cfg(key, value)).eval()
    backbone.execution = "perforated"
    with pytest.raises(ValueError, match=f"{key.rsplit('.', 1)[1]} {value}.*use MODEL.SACT.EXECUTION dense"):
        with torch.no_grad():
            backbone.forward_with_sact(torch.randn(1, 3, 64, 64))


def test_border_ratio_of_a_constructed_map():
    grid = torch.ones(4, 5)
    grid[0], grid[-1], grid[:, 0], grid[:, -1] = 3.0, 3.0, 3.0, 3.0
    assert border_ratio(grid) == pytest.approx(3.0)
    grid[1, 1] = 4.0  # interior cells (1, 1..3) and (2, 1..3): mean (4 + 5) / 6
    assert border_ratio(grid) == pytest.approx(3.0 / (9 / 6))
    assert border_ratio(torch.full((3, 3), 2.5)) == pytest.approx(1.0)
    assert border_ratio(torch.ones(2, 5)) is None and border_ratio(torch.ones(6, 2)) is None


def test_border_ratio_in_the_report_and_the_summary():
    cfg = tiny_cls_cfg("MODEL.SACT.HALTING_BIAS_INIT", "0.0")
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    sizes = [(96, 128), (70, 90)]
    x = torch.randn(2, 3, 96, 128)
    x[1, :, 70:], x[1, :, :, 90:] = 0, 0
    with torch.no_grad():
        _, outputs = backbone.forward_with_sact(x, sizes)
    reports = build_reports(backbone, outputs, sizes)
    for report in reports:
        assert set(report.border_ratio_per_block) == {"res2", "res3", "res4", "res5"}
        for block, ponder in report.ponder_maps.items():  # each image's own map
            assert report.border_ratio_per_block[block] == border_ratio(ponder)
            units = report.units_maps[block]  # N per position, on the same grid
            assert units.shape == ponder.shape and bool((units <= ponder).all())
            assert float(units.float().mean()) == pytest.approx(report.units_per_block[block])
    assert reports[1].ponder_maps["res5"].shape == (3, 3) and reports[1].border_ratio_per_block["res5"] is not None
    records = [r.record() for r in reports]
    records[1]["border_ratio_per_block"]["res5"] = None  # an image whose map has no interior
    summary = summarize_records(records)
    assert summary["border_ratio_per_block"]["res5"]["images"] == 1
    assert summary["border_ratio_per_block"]["res4"]["mean"] == pytest.approx(
        (records[0]["border_ratio_per_block"]["res4"] + records[1]["border_ratio_per_block"]["res4"]) / 2)
    assert "| border ratio |" in format_summary(summary)
    assert flat_metrics(summary)["border_ratio_res4"] == summary["border_ratio_per_block"]["res4"]["mean"]
