"""The SACT ResNet backbone against Detectron2's own ResNet, and its FLOP accounting."""
import pytest
import torch
from conftest import config_path, tiny_cfg
from test_adaptive_stage import make_units

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from fvcore.nn import FlopCountAnalysis

from sact_det import get_sact_cfg
from sact_det.modeling.flops import stage_flops
from sact_det.modeling.report import build_reports
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage, StageOutput


def r101_cfg(*opts):
    return get_sact_cfg(config_path("sact_faster_rcnn.yaml"), ["MODEL.DEVICE", "cpu", *opts])


def detectron2_backbone(cfg):
    torch.manual_seed(0)
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def test_output_shapes_and_strides():
    cfg = r101_cfg()
    backbone = build_backbone(cfg).eval()
    assert backbone.output_shape()["res4"] == ShapeSpec(channels=1024, stride=16)
    assert [s.num_units for s in backbone.stages] == [3, 4, 23]
    with torch.no_grad():
        features, outputs = backbone.forward_with_sact(torch.randn(2, 3, 100, 130), [(100, 130), (81, 97)])
    assert features["res4"].shape == (2, 1024, 7, 9)  # ceil(100 / 16), ceil(130 / 16)
    assert outputs["res2"].ponder_map.shape == (2, 25, 33)
    # The second image covers ceil(81 / 16) x ceil(97 / 16) positions of res4.
    assert outputs["res4"].valid[1, 0].sum() == 6 * 7 and outputs["res4"].valid[0].all()


@pytest.mark.parametrize("halting_type", ["none", "sact"])
def test_parameter_names_are_detectron2s(halting_type):
    """Detectron2's ResNet-101-C4 state dict loads into ours by name; only halting is new."""
    cfg = r101_cfg("MODEL.SACT.TYPE", halting_type)
    ours = build_backbone(cfg)
    result = ours.load_state_dict(detectron2_backbone(cfg).state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(".halting." in k for k in result.missing_keys)
    assert bool(result.missing_keys) == (halting_type == "sact")


def test_non_adaptive_backbone_equals_detectron2_resnet():
    cfg = r101_cfg("MODEL.SACT.TYPE", "none")
    reference = detectron2_backbone(cfg)
    ours = build_backbone(cfg).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.allclose(ours(x)["res4"], reference(x)["res4"], atol=1e-4, rtol=1e-4)


def summaries(backbone, x):
    with torch.no_grad():
        _, outputs = backbone.forward_with_sact(x, [tuple(x.shape[-2:])])
    return build_reports(backbone, outputs, [tuple(x.shape[-2:])])[0]


@pytest.mark.parametrize("config,size", [("r101", (96, 128)), ("r101", (97, 131)), ("tiny", (75, 103))])
def test_dense_flops_equal_fvcore_times_two(config, size):
    cfg = r101_cfg("MODEL.SACT.TYPE", "none") if config == "r101" else tiny_cfg("MODEL.SACT.TYPE", "none")
    ours = build_backbone(cfg).eval()
    x = torch.randn(1, 3, *size)
    counter = FlopCountAnalysis(detectron2_backbone(cfg), x)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fvcore_conv = counter.by_operator()["conv"]  # fvcore counts one multiply-add as one flop
    summary = summaries(ours, x)
    assert summary.flops == 2 * fvcore_conv
    assert summary.flops_pct == pytest.approx(100.0)
    assert summary.units_per_block == {"res2": 3, "res3": 4, "res4": 23 if config == "r101" else 6}


def test_flop_reference_is_dense_resnet101_for_shorter_baselines():
    cfg = r101_cfg("MODEL.SACT.TYPE", "none", "MODEL.SACT.NUM_UNITS", "[3, 4, 13]")
    baseline = build_backbone(cfg).eval()
    full = build_backbone(r101_cfg("MODEL.SACT.TYPE", "none")).eval()
    x = torch.randn(1, 3, 64, 80)
    short, dense = summaries(baseline, x), summaries(full, x)
    assert short.dense_flops == dense.flops
    per_res4_unit = (dense.flops_per_block["res4"] - short.flops_per_block["res4"]) / 10
    assert short.flops == dense.flops - 10 * per_res4_unit
    assert 0 < short.flops_pct < 100


def test_perforated_flops_hand_count():
    """Sec. 2.3: first 1x1 conv on the 3x3-dilated active set, 3x3 and last 1x1 on the active set."""
    stage = AdaptiveStage(make_units(3, in_channels=16, channels=32), "sact")  # bottleneck 8
    valid = torch.ones(1, 1, 6, 5, dtype=torch.bool)  # 12x10 input, stride 2
    corner = torch.zeros_like(valid)
    corner[0, 0, 0, 0] = True  # its 3x3 neighbourhood inside the map: 4 positions
    interior = torch.zeros_like(valid)
    interior[0, 0, 3, 2] = True  # 9 positions
    output = StageOutput(torch.zeros(1, 32, 6, 5), valid, torch.zeros(1, 6, 5, dtype=torch.int32),
                         torch.zeros(1, 6, 5), computed_masks=[corner, interior])
    first_unit = (2 * 16 * 8 * 120  # conv1 1x1 at the 12x10 input (stride in the 3x3)
                  + 2 * 8 * 9 * 8 * 30  # conv2 3x3 stride 2, 6x5 outputs
                  + 2 * 8 * 32 * 30  # conv3 1x1
                  + 2 * 16 * 32 * 30)  # projection shortcut 1x1 stride 2
    halting_first = 2 * 32 + 2 * 9 * 32 * 30  # pooled linear + 3x3 conv to 1 channel at 30 positions
    unit2 = 2 * 32 * 8 * 4 + 2 * 8 * 9 * 8 * 1 + 2 * 8 * 32 * 1
    halting2 = 2 * 32 + 2 * 9 * 32 * 4  # the 3x3 term's per-tap products on the dilated set
    unit3 = 2 * 32 * 8 * 9 + 2 * 8 * 9 * 8 * 1 + 2 * 8 * 32 * 1  # last unit: no halting branch
    expected = first_unit + halting_first + unit2 + halting2 + unit3
    assert stage_flops(stage, output, [(12, 10)]).tolist() == [expected]
    # ACT evaluates whole images: the first 1x1 conv runs at the active positions only.
    act = AdaptiveStage(make_units(3, in_channels=16, channels=32), "act")
    full = torch.ones_like(valid)
    output.computed_masks = [full, full]
    unit_dense = 2 * 32 * 8 * 30 + 2 * 8 * 9 * 8 * 30 + 2 * 8 * 32 * 30
    assert stage_flops(act, output, [(12, 10)]).tolist() == [first_unit + 2 * 32 + 2 * unit_dense + 2 * 32]


def test_sact_flops_follow_the_executed_units():
    backbone = build_backbone(tiny_cfg()).eval()
    x = torch.randn(1, 3, 96, 128)
    adaptive = summaries(backbone, x)
    for stage in backbone.stages:  # halt everywhere after the first unit
        for branch in stage.halting:
            branch.bias.data.fill_(10.0)
    first_only = summaries(backbone, x)
    assert first_only.units_per_block == {"res2": 1.0, "res3": 1.0, "res4": 1.0}
    assert first_only.ponder_cost == pytest.approx(3 * 2.0)  # N + R = 1 + 1 per block
    # At initialisation (b = -3) every unit runs: the dense cost plus L - 1 halting
    # branches per block (pooled linear + 3x3 conv to one channel everywhere).
    assert adaptive.units_per_block == {"res2": 3.0, "res3": 4.0, "res4": 6.0}
    halting = sum((stage.num_units - 1) * (2 * c + 2 * 9 * c * h * w)
                  for stage, (c, h, w) in zip(backbone.stages, [(64, 24, 32), (128, 12, 16), (256, 6, 8)]))
    assert adaptive.flops == adaptive.dense_flops + halting
    assert first_only.flops < adaptive.flops


def test_frozen_units_keep_trainable_halting():
    backbone = build_backbone(r101_cfg())
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for u in backbone.res2.units for p in u.parameters())
    assert all(p.requires_grad for p in backbone.res2.halting.parameters())
    assert all(p.requires_grad for p in backbone.res3.parameters())


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match="MODEL.SACT.TYPE"):
        r101_cfg("MODEL.SACT.TYPE", "spatial")
    with pytest.raises(ValueError, match="MODEL.SACT.NUM_UNITS"):
        r101_cfg("MODEL.SACT.NUM_UNITS", "[3, 4]")
    with pytest.raises(ValueError, match="MODEL.RESNETS.DEPTH"):
        build_backbone(r101_cfg("MODEL.RESNETS.DEPTH", "34"))


@pytest.mark.parametrize("execution", ["dense", "perforated", "tiled"])
def test_a_batched_image_gets_what_it_gets_alone(execution):
    """Padding is zero after the stem and after every unit (and inside units
    after the first convolution), so an image's features, ponder maps and FLOPs
    in a padded batch equal those it gets alone, to float tolerance."""
    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg("MODEL.SACT.TILE_SIZE", "2")).eval()
    for stage in backbone.stages:  # a mixed halting pattern
        for branch in stage.halting:
            branch.bias.data.fill_(-1.0)
            branch.spatial_logit.weight.data.normal_(0, 0.05)
    backbone.execution = execution
    small, large = torch.randn(1, 3, 81, 97), torch.randn(1, 3, 128, 160)
    batch = torch.zeros(2, 3, 128, 160)
    batch[0, :, :81, :97], batch[1] = small[0], large[0]
    with torch.no_grad():
        alone_features, alone_outputs = backbone.forward_with_sact(small, [(81, 97)])
        batch_features, batch_outputs = backbone.forward_with_sact(batch, [(81, 97), (128, 160)])
    alone = build_reports(backbone, alone_outputs, [(81, 97)])[0]
    batched = build_reports(backbone, batch_outputs, [(81, 97), (128, 160)])[0]
    h, w = alone_features["res4"].shape[-2:]
    assert torch.allclose(alone_features["res4"][0], batch_features["res4"][0, :, :h, :w], atol=1e-4, rtol=1e-4)
    assert (batch_features["res4"][0, :, h:] == 0).all() and (batch_features["res4"][0, :, :, w:] == 0).all()
    for name, ponder in alone.ponder_maps.items():
        assert torch.allclose(ponder, batched.ponder_maps[name], atol=1e-5)
        assert 1 < ponder.min() < ponder.max()  # adaptive: the maps vary
    assert alone.units_per_block == pytest.approx(batched.units_per_block)
    assert alone.flops == batched.flops and alone.flops_per_block == batched.flops_per_block
