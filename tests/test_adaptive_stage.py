"""An adaptive block of Detectron2 residual units (sact_det.modeling.sact.adaptive_stage)."""
import copy

import pytest
import torch
from torch import nn

from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet

from sact_det.modeling.sact.adaptive_stage import AdaptiveStage


def make_units(num_units=4, in_channels=16, channels=32, norm="FrozenBN", seed=0):
    torch.manual_seed(seed)
    units = ResNet.make_stage(BottleneckBlock, num_units, stride_per_block=[2] + [1] * (num_units - 1),
                              in_channels=in_channels, bottleneck_channels=8,
                              out_channels=channels, norm=norm)
    for unit in units:  # non-trivial residuals (MSRA init of conv3 is small but non-zero)
        for p in unit.parameters():
            p.data.add_(torch.randn_like(p) * 0.05)
    return units


class FixedHalting(nn.Module):
    """Stands in for a halting branch and returns prescribed scores."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def forward(self, x, valid=None):
        return self.scores


def set_bias(stage, value):
    for branch in stage.halting:
        branch.bias.data.fill_(value)


def record_unit_inputs(stage):
    inputs = {}
    for index, unit in enumerate(stage.units):
        unit.register_forward_hook(lambda m, args, out, i=index: inputs.__setitem__(i, (args[0], out)))
    return inputs


def test_act_with_zero_halting_scores_is_the_plain_block():
    units = make_units()
    stage = AdaptiveStage(copy.deepcopy(units), "act").eval()
    set_bias(stage, -100.0)  # h = sigmoid(-100) = 0 in float32
    x = torch.randn(2, 16, 12, 10)
    out = stage(x)
    assert torch.allclose(out.features, nn.Sequential(*units).eval()(x), atol=1e-6)
    assert (out.num_units_map == 4).all()
    assert torch.allclose(out.ponder_cost(), torch.full((2,), 5.0))  # N + R = 4 + 1


@pytest.mark.parametrize("training", [False, True])
def test_sact_with_zero_spatial_weights_is_act(training):
    units = make_units()
    act = AdaptiveStage(copy.deepcopy(units), "act")
    sact = AdaptiveStage(copy.deepcopy(units), "sact")
    torch.manual_seed(3)
    for a, s in zip(act.halting, sact.halting):
        a.global_logit.weight.data.normal_(0, 0.5)
        a.bias.data.fill_(-2.0)
        s.global_logit.weight.data.copy_(a.global_logit.weight)
        s.bias.data.copy_(a.bias)
        s.spatial_logit.weight.data.zero_()
    act.train(training), sact.train(training)
    x = torch.randn(3, 16, 14, 12) * torch.tensor([0.2, 1.0, 4.0]).view(3, 1, 1, 1)
    out_act, out_sact = act(x), sact(x)
    assert torch.allclose(out_act.features, out_sact.features, atol=1e-5)
    assert torch.allclose(out_act.ponder_map, out_sact.ponder_map, atol=1e-5)
    assert torch.equal(out_act.num_units_map, out_sact.num_units_map)
    # A genuinely adaptive case: the images halt after different numbers of units.
    assert len(set(out_act.num_units_map[:, 0, 0].tolist())) > 1


def test_sact_halting_varies_over_space_and_inactive_positions_are_unchanged():
    stage = AdaptiveStage(make_units(5), "sact").eval()
    height, width = 8, 6
    left = torch.zeros(1, 1, height, width)
    left[..., :, :3] = 1.0
    # Left half halts after unit 2 (0.5 + 0.6 >= 0.99); right half runs all 5 units.
    scores = [left * 0.5 + 0.05, left * 0.6 + 0.05, torch.full_like(left, 0.05), torch.full_like(left, 0.05)]
    stage.halting = nn.ModuleList(FixedHalting(s) for s in scores)
    inputs = record_unit_inputs(stage)
    out = stage(torch.randn(1, 16, 2 * height, 2 * width))
    expected_units = torch.where(left[:, 0] > 0, 2, 5).int()
    assert torch.equal(out.num_units_map, expected_units)
    assert len(out.computed_masks) == 4
    for index in range(1, 4):
        mask = out.computed_masks[index - 1]
        unit_input, unit_output = inputs[index]
        next_input = inputs[index + 1][0]
        # Lines 13-16 of Alg. 2: F^l at active positions, the previous value elsewhere.
        assert torch.equal(next_input, torch.where(mask, unit_output, unit_input))
        if index >= 2:
            assert not mask[..., :3].any() and mask[..., 3:].all()
    # Ponder cost, eq. (11): left N=2, R = 1 - 0.55 = 0.45; right N=5, R = 1 - 4 * 0.05.
    assert torch.allclose(out.ponder_map[0, 0, 0], torch.tensor(2.45))
    assert torch.allclose(out.ponder_map[0, 0, -1], torch.tensor(5.8))


def test_inference_stops_when_all_positions_halt_but_training_runs_every_unit():
    stage = AdaptiveStage(make_units(4), "sact")
    set_bias(stage, 6.0)  # h ~ 0.9975 >= 1 - eps: every position halts after unit 1
    for branch in stage.halting:
        branch.spatial_logit.weight.data.zero_()
    inputs = record_unit_inputs(stage)
    x = torch.randn(2, 16, 10, 10)
    eval_out = stage.eval()(x)
    assert sorted(inputs) == [0] and eval_out.computed_masks == []
    inputs.clear()
    train_out = stage.train()(x)
    assert sorted(inputs) == [0, 1, 2, 3]
    assert torch.allclose(eval_out.features, train_out.features)
    assert (train_out.num_units_map == 1).all()
    # Every parameter is in the graph (DistributedDataParallel needs no unused-parameter search).
    (train_out.features.sum() + train_out.ponder_cost().sum()).backward()
    assert all(p.grad is not None for p in stage.parameters() if p.requires_grad)


def test_padding_positions_never_compute_or_count():
    stage = AdaptiveStage(make_units(3), "sact").eval()
    input_valid = torch.zeros(2, 1, 12, 16, dtype=torch.bool)
    input_valid[0] = True
    input_valid[1, :, :8, :9] = True  # ceil(8 / 2) x ceil(9 / 2) = 4 x 5 positions after the stride
    out = stage(torch.randn(2, 16, 12, 16) * input_valid, input_valid)
    valid = out.valid
    assert valid[1, 0].sum() == 4 * 5 and valid[1, 0, :4, :5].all()
    assert (out.features[1][:, ~valid[1, 0]] == 0).all()
    assert (out.ponder_map[1][~valid[1, 0]] == 0).all() and (out.num_units_map[1][~valid[1, 0]] == 0).all()
    expected = out.ponder_map[1][valid[1, 0]].mean()
    assert torch.allclose(out.ponder_cost()[1], expected)
    assert all(not m[1][~valid[1]].any() for m in out.computed_masks)


def test_non_adaptive_block_has_no_halting_parameters():
    units = make_units(3)
    stage = AdaptiveStage(copy.deepcopy(units), "none").eval()
    assert stage.halting is None and not any("halting" in k for k in stage.state_dict())
    x = torch.randn(1, 16, 8, 8)
    assert torch.allclose(stage(x).features, nn.Sequential(*units).eval()(x))


def test_rejects_unknown_halting_type():
    with pytest.raises(ValueError, match="halting type"):
        AdaptiveStage(make_units(2), "spatial")


def test_mixed_precision_keeps_halting_bookkeeping_in_float32():
    stage = AdaptiveStage(make_units(4), "sact").eval()
    x = torch.randn(2, 16, 12, 12)
    reference = stage(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stage(x)
    assert out.features.dtype == torch.bfloat16  # activations stay in the autocast dtype
    assert out.ponder_map.dtype == torch.float32  # cumulative sums and ponder cost do not
    assert torch.equal(out.num_units_map, reference.num_units_map)
    assert torch.allclose(out.ponder_map, reference.ponder_map, atol=1e-2)
    assert torch.allclose(out.features.float(), reference.features, atol=0.1, rtol=0.05)
