"""Sparse execution (sact_det.modeling.sparse) equals the dense masked computation."""
import copy

import pytest
import torch
from conftest import tiny_cfg
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet

from sact_det.modeling.flops import stage_flops
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage
from sact_det.modeling.sact.halting import tile_average
from sact_det.modeling.sparse import SparseStageExecutor, fold_conv_norm


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


THRESHOLD_BAND = 1e-5  # "at the threshold": |c - (1 - eps)| below this (rounding is ~1e-7)


def run_dense(stage, x, valid=None):
    """The dense masked stage, with ``near_threshold``: bool ``[B, H, W]``, the
    positions whose cumulative halting score came within THRESHOLD_BAND of
    1 - eps at a unit where they decided (eq. 7). Only there may another
    execution, whose kernels round differently, decide otherwise."""
    scores = []
    handles = [branch.register_forward_hook(lambda m, args, out: scores.append(out)) for branch in stage.halting]
    try:
        out = stage(x, valid)
    finally:
        for handle in handles:
            handle.remove()
    near = torch.zeros_like(out.num_units_map, dtype=torch.bool)
    cumulative = 0
    for index, score in enumerate(scores):
        cumulative = cumulative + tile_average(score, stage.tile_size, out.valid)[:, 0]
        decided = out.num_units_map > index  # evaluated unit index + 1, then decided
        near |= decided & ((cumulative - (1 - stage.eps)).abs() < THRESHOLD_BAND)
    out.near_threshold = near
    return out


def reach(mask, steps):
    """Positions within ``steps`` 3x3 neighbourhoods of a bool ``[B, H, W]`` mask."""
    spread = mask[:, None].float()
    for _ in range(steps):
        spread = F.max_pool2d(spread, 3, stride=1, padding=1)
    return spread[:, 0] > 0


def assert_same(dense, sparse, atol=1e-4):
    """Equal halting decisions, ponder maps, features and computed positions,
    up to positions at the threshold (``dense.near_threshold``): those may halt
    one unit apart, and so may positions whose later 3x3 convolutions read
    them (a flip changes a feature by O(1)). Away from the flips, the pooled
    halting term (a mean over the image) moves ponder costs and features a
    little: measured below 6e-3 and 3e-2 when positions are forced there."""
    flipped = dense.num_units_map != sparse.num_units_map
    steps = len(dense.computed_masks) + 1
    assert not (flipped & ~reach(dense.near_threshold, steps)).any(), \
        "a halting decision differs away from the threshold"
    keep = ~reach(flipped, steps)
    ponder_atol, feature_atol = (1e-2, 5e-2) if flipped.any() else (1e-5, atol)
    assert torch.equal(dense.num_units_map[keep], sparse.num_units_map[keep])
    assert torch.allclose(dense.ponder_map[keep], sparse.ponder_map[keep], atol=ponder_atol)
    features = sparse.features.contiguous()
    assert torch.allclose(dense.features.permute(0, 2, 3, 1)[keep], features.permute(0, 2, 3, 1)[keep],
                          atol=feature_atol, rtol=1e-4)
    assert len(dense.computed_masks) == len(sparse.computed_masks) or flipped.any()
    for a, b in zip(dense.computed_masks, sparse.computed_masks):
        assert torch.equal(a[:, 0][keep], b[:, 0][keep])


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
    dense = run_dense(stage, x)
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


@pytest.mark.parametrize("bias", [-10.0, -1.5])
def test_plain_pytorch_kernels_equal_the_fused_ones(bias):
    """The plain-PyTorch forms of sact_det.modeling.sparse.kernels (CUDA, builds without
    oneDNN), in-place dense units included, give the same block; no execution
    writes over the caller's input."""
    import sact_det.modeling.sparse.kernels as kernels

    stage = make_stage(bias=bias, spatial_std=0.5, seed=6)
    x = torch.randn(2, 16, 22, 26)
    original = x.clone()
    dense = run_dense(stage, x)
    for max_active in (0.5, 2.0):  # with and without dense units after the first
        fused = SparseStageExecutor(stage, "perforated", max_active)(x, None)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not kernels.fused_available(x)
            plain = SparseStageExecutor(stage, "perforated", max_active)(x, None)
        assert_same(dense, fused)
        assert_same(dense, plain)
    assert torch.equal(x, original)


@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_perforated_in_many_chunks(monkeypatch, keep_bytes):
    """Chunked gathers and the chunked output accumulation (large maps in
    practice), with and without the new rows kept for the accumulation."""
    import sact_det.modeling.sparse.rows as sparse_module

    monkeypatch.setattr(sparse_module, "_CHUNK_BYTES", 1)  # the minimum: 256 rows per chunk
    monkeypatch.setattr(sparse_module, "_KEEP_BYTES", keep_bytes)
    x = torch.randn(2, 16, 64, 60)
    for tile_size, execution in ((1, "perforated"), (4, "tiled")):
        stage = make_stage(spatial_std=0.5, seed=5, tile_size=tile_size)
        dense = run_dense(stage, x)
        assert max(int(m.sum()) for m in dense.computed_masks) > 256  # several chunks
        assert_same(dense, SparseStageExecutor(stage, execution, max_active=2.0)(x, None))


def test_perforated_with_padded_batch_and_different_active_sets():
    stage = make_stage(spatial_std=0.5, seed=3)
    input_valid = torch.zeros(3, 1, 22, 26, dtype=torch.bool)
    input_valid[0] = True
    input_valid[1, :, :13, :19] = True  # 7 x 10 positions after the stride
    input_valid[2, :, :22, :7] = True  # 11 x 4
    x = torch.randn(3, 16, 22, 26) * torch.tensor([1.0, 3.0, 0.3]).view(3, 1, 1, 1) * input_valid
    dense = run_dense(stage, x, input_valid)
    valid = dense.valid
    assert valid[1, 0].sum() == 7 * 10 and valid[2, 0].sum() == 11 * 4
    for max_active in (0.8, 0.5, 2.0):
        sparse = SparseStageExecutor(stage, "perforated", max_active)(x, input_valid)
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
    input_valid = torch.ones(2, 1, 22, 26, dtype=torch.bool)
    input_valid[1, :, 16:, :] = False  # 8 of 11 rows after the stride
    x = torch.randn(2, 16, 22, 26) * input_valid
    dense = run_dense(stage, x, input_valid)
    tiled = SparseStageExecutor(stage, "tiled", max_active=2.0)(x, input_valid)
    perforated = SparseStageExecutor(stage, "perforated", max_active=2.0)(x, input_valid)
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
    dense, sparse = run_dense(stage, x), SparseStageExecutor(stage, "perforated", max_active=2.0)(x, None)
    assert_same(dense, sparse)
    assert dense.num_units_map[:, 0, 0].tolist() == [4, 4, 2]  # the third image stops early
    accounted = stage_flops(stage, sparse, [(14, 12)] * 3)
    assert sparse.executed_flops == int(accounted.sum())


def test_executor_follows_weight_changes():
    stage = make_stage(seed=5)
    executor = SparseStageExecutor(stage, "perforated")
    assert executor.is_current()
    with torch.no_grad():
        stage.units[2].conv3.weight.mul_(2.0)  # in place
    assert not executor.is_current()
    executor = SparseStageExecutor(stage, "perforated")
    stage.units[1].conv1.weight = torch.nn.Parameter(stage.units[1].conv1.weight.detach().clone())  # replaced
    assert not executor.is_current()
    executor = SparseStageExecutor(stage, "perforated")
    stage.halting[0].bias.data = stage.halting[0].bias.data.clone()  # new storage (as .to() gives)
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
        assert d["sact"].flops == p["sact"].flops and d["sact"].flops < d["sact"].dense_flops
        assert torch.allclose(d["sact"].ponder_map, p["sact"].ponder_map, atol=1e-5)
        assert len(d["instances"]) == len(p["instances"]) > 0
        assert torch.allclose(d["instances"].scores, p["instances"].scores, atol=1e-4)
        assert torch.allclose(d["instances"].pred_boxes.tensor, p["instances"].pred_boxes.tensor, atol=1e-2)


def force_threshold(stage, x, margin):
    """Sets the first halting bias (by bisection) so that, in the dense run,
    the median position's score after the first unit (shared within tiles, if
    any) is ``1 - eps - margin``: at the threshold of eq. (7)."""
    inputs = []
    branch = stage.halting[0]
    handle = branch.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.no_grad():
        stage(x)
    handle.remove()

    @torch.no_grad()
    def scores(bias):
        branch.bias.fill_(bias)
        return tile_average(branch(inputs[0]), stage.tile_size, None).flatten()

    initial = scores(branch.bias.item())
    position = initial.argsort()[initial.numel() // 2]
    low, high = -40.0, 40.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if scores(mid)[position] < 1 - stage.eps - margin else (low, mid)
    scores(high if margin == 0 else low)


@pytest.mark.parametrize("seed", range(8))
def test_only_positions_at_the_threshold_may_halt_differently(seed):
    """Kernels of the three executions round differently, so a cumulative score
    at 1 - eps may fall on either side: with positions forced there, decisions
    differ only there and within reach (measured: flips in 108 of 300 such
    runs, 887 of 85,800 positions; machine-dependent)."""
    stage = make_stage(spatial_std=0.5, seed=seed, tile_size=2)
    x = torch.randn(2, 16, 22, 26)
    force_threshold(stage, x, margin=0.0)
    dense = run_dense(stage, x)
    assert dense.near_threshold.any()
    for execution in ("perforated", "tiled"):
        assert_same(dense, SparseStageExecutor(stage, execution, max_active=2.0)(x, None))


def test_a_rounding_difference_flips_positions_at_the_threshold_only(monkeypatch):
    """A deterministic stand-in for rounding: the sparse halting logits moved by
    5e-4 (scores by ~5e-6, inside the threshold band) flip exactly the forced
    positions, and features and ponder maps stay equal out of their reach."""
    from sact_det.modeling.sparse.folding import FoldedHalting

    stage = make_stage(spatial_std=0.5, seed=11)
    x = torch.randn(2, 16, 22, 26)
    force_threshold(stage, x, margin=2e-6)  # the median position continues in the dense run
    dense = run_dense(stage, x)
    original = FoldedHalting.offset_bias
    monkeypatch.setattr(FoldedHalting, "offset_bias", property(lambda self: original.fget(self) + 5e-4))
    sparse = SparseStageExecutor(stage, "perforated", max_active=2.0)(x, None)
    flipped = dense.num_units_map != sparse.num_units_map
    assert (sparse.num_units_map[dense.near_threshold] == 1).all()  # the forced positions halt now
    assert flipped.any() and dense.near_threshold.sum() < flipped.numel() // 4
    assert_same(dense, sparse)
