"""Pre-activation units (MODEL.SACT.UNIT_TYPE pre_activation): structure and names
(the TF converter's contract), TensorFlow's "SAME" pooling, FLOPs against a hand
count and the official constant, batched images equal to each image alone."""
import math

import pytest
import torch
from conftest import config_path, tiny_cls_cfg

from detectron2.modeling import build_backbone, build_model

from sact_det import get_sact_cfg
from sact_det.modeling.classifier import SACTClassifier
from sact_det.modeling.flops import dense_flops, linear_flops
from sact_det.modeling.preact import PreActBottleneck, PreActStem, same_max_pool

# Official imagenet_model_test.py::testFlopsVanilla: dense ResNet-101 at 224x224, 1001 classes.
OFFICIAL_R101_FLOPS = 15_602_814_976


def hand_count(units, image=224, classes=1001, base=64, stem=64):
    """FLOPs of a dense pre-activation ResNet, from the architecture alone:
    multiply-add = 2, convolutions and the logits layer, biases ignored."""
    def conv(k, c_in, c_out, side):
        return 2 * k * k * c_in * c_out * side * side

    side = math.ceil(image / 2)
    flops = conv(7, 3, stem, side)
    side = math.ceil(side / 2)  # "SAME" max pool
    c_in = stem
    for block, count in enumerate(units):
        depth, bottleneck = 4 * base * 2 ** block, base * 2 ** block
        for unit in range(count):
            out = math.ceil(side / 2) if unit == 0 and block > 0 else side  # stride in the 3x3
            flops += conv(1, c_in, bottleneck, side) + conv(3, bottleneck, bottleneck, out) + conv(1, bottleneck, depth, out)
            if c_in != depth:
                flops += conv(1, c_in, depth, out)  # projection shortcut
            c_in, side = depth, out
    return flops + 2 * c_in * classes


def preact_r101_cfg(*opts):
    return get_sact_cfg(config_path("imagenet/sact_R101_preact.yaml"),
                        ["MODEL.DEVICE", "cpu", "MODEL.SACT.TYPE", "none", "MODEL.CLASSIFIER.NUM_CLASSES", "1001",
                         *opts])


def test_hand_count_is_the_official_constant():
    assert hand_count([3, 4, 23, 3]) == OFFICIAL_R101_FLOPS
    assert hand_count([3, 4, 6, 3]) == 8_178_372_608  # official R50
    assert hand_count([3, 8, 36, 3]) == 23_027_257_344  # official R152


@pytest.mark.parametrize("depth", [50, 101])
def test_module_counts_equal_the_hand_count(depth):
    cfg = preact_r101_cfg("MODEL.RESNETS.DEPTH", str(depth), "MODEL.SACT.FLOPS_REFERENCE_DEPTH", str(depth))
    with torch.device("meta"):  # shapes only
        model = SACTClassifier(cfg)
    stages = [s.units for s in model.backbone.stages]
    units = [len(u) for u in stages]
    flops = dense_flops(model.backbone.stem, stages, (224, 224)) + linear_flops(model.linear)
    assert flops == hand_count(units)
    assert model.backbone.dense_reference_flops((224, 224)) + linear_flops(model.linear) == hand_count(units)


def test_classifier_report_of_dense_r101_is_the_official_constant():
    model = build_model(preact_r101_cfg()).eval()
    with torch.no_grad():
        report = model([{"image": torch.rand(3, 224, 224) * 255}])[0]["sact"]
    assert report.flops == OFFICIAL_R101_FLOPS == report.dense_flops
    assert report.flops_per_block["linear"] == 2 * 2048 * 1001
    assert report.flops_pct == pytest.approx(100.0)


def test_same_max_pool_pads_like_tensorflow():
    even = -torch.arange(1.0, 5.0).view(1, 1, 4, 1)  # negative: a zero padding would win the max
    assert same_max_pool(even).flatten().tolist() == [-1.0, -3.0]  # pads (0, 1): windows 0-2, 2-3
    odd = -torch.arange(1.0, 6.0).view(1, 1, 5, 1)
    assert same_max_pool(odd).flatten().tolist() == [-1.0, -2.0, -4.0]  # pads (1, 1): 0-1, 1-3, 3-4


def test_parameter_names_follow_the_converter_contract():
    cfg = tiny_cls_cfg("MODEL.SACT.UNIT_TYPE", "pre_activation", "MODEL.SACT.HALTING_NORM", "True")
    model = build_model(cfg)
    names = dict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    assert names["backbone.stem.conv1.weight"] == (16, 3, 7, 7) and names["backbone.stem.conv1.bias"] == (16,)
    assert not any(k.startswith("backbone.stem.conv1.norm") for k in names)
    for key in ("preact.running_var", "conv1.weight", "conv1.norm.running_mean", "conv2.norm.weight", "conv3.weight",
                "conv3.bias", "shortcut.weight", "shortcut.bias"):
        assert f"backbone.res2.0.{key}" in names, key
    assert "backbone.res2.1.shortcut.weight" not in names and "backbone.res2.1.conv3.bias" in names
    assert names["backbone.res5.0.shortcut.weight"] == (512, 256, 1, 1)
    halting = "backbone.res4.halting.0."
    assert names[halting + "spatial_logit.weight"] == (1, 256, 3, 3) and names[halting + "global_logit.weight"] == (1, 256)
    assert names[halting + "bias"] == (1,)
    for norm in ("local_norm", "global_norm"):
        assert names[halting + f"{norm}.running_mean"] == (256,)
    assert "backbone.res5.halting.1.bias" in names and "backbone.res5.halting.2.bias" not in names  # not the last unit
    assert names["backbone.postnorm.weight"] == (512,) and names["linear.weight"] == (4, 512)
    # The stride of a block's first unit is in its 3x3 convolution.
    first = model.backbone.res3.units[0]
    assert isinstance(first, PreActBottleneck) and first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert isinstance(model.backbone.stem, PreActStem) and model.backbone.stem.stride == 4


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Batch-norm statistics and affine parameters, and halting weights large
    enough for their 3x3 terms to matter, so that padding mistakes show."""
    generator = torch.Generator().manual_seed(seed)
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.3)
        if name.endswith("spatial_logit") or name.endswith("global_logit"):
            m.weight.data.normal_(0, 0.2, generator=generator)
        if name.split(".")[-2:-1] == ["halting"]:
            m.bias.data.fill_(0.3)


@pytest.mark.parametrize("halting_type,norm,padding", [("sact", "False", "zeros"), ("sact", "True", "zeros"),
                                                        ("sact", "True", "replicate"), ("act", "True", "zeros")])
def test_batched_images_equal_each_alone(halting_type, norm, padding):
    cfg = tiny_cls_cfg("MODEL.SACT.UNIT_TYPE", "pre_activation", "MODEL.SACT.TYPE", halting_type,
                       "MODEL.SACT.HALTING_NORM", norm, "MODEL.SACT.HALTING_PADDING", padding)
    torch.manual_seed(0)
    backbone = build_backbone(cfg).eval()
    randomise(backbone)
    sizes = [(69, 90), (50, 61)]  # odd and even sizes: "SAME" pooling pads them differently
    images = [torch.randn(3, h, w) for h, w in sizes]
    batch = torch.zeros(2, 3, 69, 90)
    for index, image in enumerate(images):
        batch[index, :, :image.shape[1], :image.shape[2]] = image
    with torch.no_grad():
        features, outputs = backbone.forward_with_sact(batch, sizes)
        for index, image in enumerate(images):
            alone_features, alone = backbone.forward_with_sact(image[None], [sizes[index]])
            h, w = alone_features["res5"].shape[-2:]
            assert torch.allclose(features["res5"][index, :, :h, :w], alone_features["res5"][0], rtol=1e-4, atol=1e-3)
            assert not features["res5"][index, :, h:, :].any() and not features["res5"][index, :, :, w:].any()
            for name, out in alone.items():
                h, w = out.num_units_map.shape[-2:]
                assert torch.equal(outputs[name].num_units_map[index, :h, :w], out.num_units_map[0]), name
                assert torch.allclose(outputs[name].ponder_map[index, :h, :w], out.ponder_map[0], atol=1e-5), name
    # the halting actually varies (the test would be vacuous with every unit everywhere)
    assert any(out.num_units_map.float().std() > 0 for out in outputs.values())
