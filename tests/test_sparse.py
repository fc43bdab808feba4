"""Sparse execution (sact_det.sparse) equals the dense masked computation."""
import copy

import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet

from sact_det.adaptive_stage import AdaptiveStage
from sact_det.flops import stage_flops
from sact_det.sparse import SparseStageExecutor, fold_conv_norm

from conftest import tiny_cfg


def make_stage(halting_type="sact", num_units=5, bias=-1.5, spatial_std=0.05, tile_size=1, seed=0,
               channels=32, bottleneck=8):
    """A stage with non-trivial frozen batch norm and halting weights."""
    torch.manual_seed(seed)
    units = ResNet.make_stage(BottleneckBlock, num_units, stride_per_block=[2] + [1] * (num_units - 1),
                              in_channels=16, bottleneck_channels=bottleneck, out_channels=channels,
                              norm="FrozenBN")
    stage = AdaptiveStage(units, halting_type, tile_size=tile_size).eval()
    for module in stage.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    for branch in stage.halting:
        branch.bias.data.fill_(bias)
        branch.global_logit.weight.data.normal_(0, 0.05)
        if branch.spatial_logit is not None:
            branch.spatial_logit.weight.data.normal_(0, spatial_std)
    return stage


def assert_same(dense, sparse, atol=1e-4):
    assert torch.equal(dense.num_units_map, sparse.num_units_map)
    assert torch.allclose(dense.ponder_map, sparse.ponder_map, atol=1e-5)
    assert torch.allclose(dense.features, sparse.features.contiguous(), atol=atol, rtol=1e-4)
    assert len(dense.computed_masks) == len(sparse.computed_masks)
    for a, b in zip(dense.computed_masks, sparse.computed_masks):
        assert torch.equal(a, b)


def isolated_positions(mask):
    """Active positions none of whose 8 neighbours is active."""
    count = F.conv2d(mask.float(), torch.ones(1, 1, 3, 3), padding=1) - mask.float()
    return int((mask & (count == 0)).sum())


def test_folded_batch_norm_is_exact():
    stage = make_stage()
    conv = stage.units[1].conv2
    weight, bias = fold_conv_norm(conv)
    x = torch.randn(1, conv.in_channels, 6, 6)
    assert torch.allclose(F.conv2d(x, weight, bias, padding=1), conv(x), atol=1e-5)


@pytest.mark.parametrize("bias,label", [(-10.0, "all active"), (10.0, "none beyond the first unit"),
                                        (-1.5, "mixed with isolated positions")])
def test_perforated_equals_dense(bias, label):
    stage = make_stage(bias=bias, spatial_std=0.5 if label.startswith("mixed") else 0.05)
    x = torch.randn(2, 16, 22, 26)
    dense = stage(x)
    sparse = SparseStageExecutor(stage, "perforated", max_active=2.0)(x, None)  # every unit sparse
    assert_same(dense, sparse)
    assert_same(dense, SparseStageExecutor(stage, "perforated")(x, None))  # dense units above 80%
    units = dense.num_units_map
    if label == "all active":
        assert (units == 5).all()
    elif label.startswith("none"):
        assert (units == 1).all() and sparse.computed_masks == []
    else:
        assert units.min() < units.max()
        assert sum(isolated_positions(m) for m in dense.computed_masks) > 0
        border = torch.cat([units[:, 0], units[:, -1], units[:, :, 0], units[:, :, -1]], 1)
        assert (border > 1).any()  # active positions on the image border


@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_perforated_in_many_chunks(monkeypatch, keep_bytes):
    """Chunked gathers and the chunked output accumulation (large maps in
    practice), with and without the new rows kept for the accumulation."""
    import sact_det.sparse as sparse_module

    monkeypatch.setattr(sparse_module, "_CHUNK_BYTES", 1)  # the minimum: 256 rows per chunk
    monkeypatch.setattr(sparse_module, "_KEEP_BYTES", keep_bytes)
    x = torch.randn(2, 16, 64, 60)
    for tile_size, execution in ((1, "perforated"), (4, "tiled")):
        stage = make_stage(spatial_std=0.5, seed=5, tile_size=tile_size)
        dense = stage(x)
        assert max(int(m.sum()) for m in dense.computed_masks) > 256  # several chunks
        assert_same(dense, SparseStageExecutor(stage, execution, max_active=2.0)(x, None))


def test_perforated_with_padded_batch_and_different_active_sets():
    stage = make_stage(spatial_std=0.5, seed=3)
    valid = torch.zeros(3, 1, 11, 13, dtype=torch.bool)
    valid[0] = True
    valid[1, :, :7, :10] = True
    valid[2, :, :11, :4] = True
    x = torch.randn(3, 16, 22, 26) * torch.tensor([1.0, 3.0, 0.3]).view(3, 1, 1, 1)
    dense = stage(x, valid)
    for max_active in (0.8, 0.5, 2.0):
        sparse = SparseStageExecutor(stage, "perforated", max_active)(x, valid)
        assert_same(dense, sparse)
    per_image = [m.flatten(1).sum(1) for m in dense.computed_masks]
    assert any(len(set(p.tolist())) == 3 for p in per_image)  # the images differ
    assert (sparse.features[1][:, ~valid[1, 0]] == 0).all()


def test_perforated_flops_equal_the_accounting():
    stage = make_stage(spatial_std=0.5, seed=1)
    x = torch.randn(2, 16, 22, 26)
    sparse = SparseStageExecutor(stage, "perforated", max_active=2.0)(x, None)
    accounted = stage_flops(stage, sparse, [(22, 26), (22, 26)])
    assert sparse.executed_flops == int(accounted.sum())
    # Units denser than max_active run on the whole map: more FLOPs executed than accounted.
    hybrid = SparseStageExecutor(stage, "perforated", max_active=0.5)(x, None)
    assert hybrid.executed_flops > sparse.executed_flops


@pytest.mark.parametrize("tile_size", [2, 4, 5])
def test_tiled_equals_dense_with_tiled_halting(tile_size):
    stage = make_stage(spatial_std=0.5, tile_size=tile_size, seed=2)
    valid = torch.ones(2, 1, 11, 13, dtype=torch.bool)
    valid[1, :, 8:, :] = False
    x = torch.randn(2, 16, 22, 26)
    dense = stage(x, valid)
    tiled = SparseStageExecutor(stage, "tiled", max_active=2.0)(x, valid)
    perforated = SparseStageExecutor(stage, "perforated", max_active=2.0)(x, valid)
    assert_same(dense, tiled)
    assert_same(dense, perforated)
    units = dense.num_units_map[0]
    assert units.min() < units.max()
    # Scores are shared by tiles: every tile's positions run the same number of units.
    tiles = units[: 11 // tile_size * tile_size, : 13 // tile_size * tile_size]
    blocks = tiles.unfold(0, tile_size, tile_size).unfold(1, tile_size, tile_size)
    assert (blocks.amin((-1, -2)) == blocks.amax((-1, -2))).all()
    # Executed FLOPs include each active tile's halo: never below the perforated count.
    assert tiled.executed_flops >= perforated.executed_flops > 0


def test_act_runs_only_active_images():
    stage = make_stage("act", seed=4)
    torch.manual_seed(1)
    for branch in stage.halting:
        branch.global_logit.weight.data.normal_(0, 1.0)
        branch.bias.data.fill_(-2.0)
    x = torch.randn(3, 16, 14, 12) * torch.tensor([0.2, 1.0, 4.0]).view(3, 1, 1, 1)
    dense, sparse = stage(x), SparseStageExecutor(stage, "perforated", max_active=2.0)(x, None)
    assert_same(dense, sparse)
    assert dense.num_units_map[:, 0, 0].tolist() == [4, 4, 2]  # the third image stops early
    accounted = stage_flops(stage, sparse, [(14, 12)] * 3)
    assert sparse.executed_flops == int(accounted.sum())


def test_executor_follows_weight_changes():
    stage = make_stage(seed=5)
    executor = SparseStageExecutor(stage, "perforated")
    assert executor.is_current()
    with torch.no_grad():
        stage.units[2].conv3.weight.mul_(2.0)
    assert not executor.is_current()


def test_detector_gives_the_same_detections(synthetic_root):
    cfg = tiny_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for stage in model.backbone.stages:  # a mixed halting pattern
        for branch in stage.halting:
            branch.bias.data.fill_(-1.0)
            branch.spatial_logit.weight.data.normal_(0, 0.02)
    images = [{"image": torch.rand(3, 128, 160) * 255}, {"image": torch.rand(3, 112, 176) * 255}]
    with torch.no_grad():
        dense = model(copy.deepcopy(images))
        model.backbone.execution = "perforated"
        perforated = model(copy.deepcopy(images))
    for d, p in zip(dense, perforated):
        assert d["sact"]["flops"] == p["sact"]["flops"] and d["sact"]["flops"] < d["sact"]["dense_flops"]
        assert torch.allclose(d["sact"]["ponder_map"], p["sact"]["ponder_map"], atol=1e-5)
        assert len(d["instances"]) == len(p["instances"]) > 0
        assert torch.allclose(d["instances"].scores, p["instances"].scores, atol=1e-4)
        assert torch.allclose(d["instances"].pred_boxes.tensor, p["instances"].pred_boxes.tensor, atol=1e-2)
