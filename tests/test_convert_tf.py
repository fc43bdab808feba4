"""The authors' TensorFlow checkpoints converted (tools/convert_sact_tf_checkpoint.py).

The checkpoints are written by TensorFlow itself (tests/official_tf.py: the
official variable names and shapes of a tiny network, random values).
"""
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import load_tool
from official_tf import official_forward, random_values, slim_variables, write_checkpoint

from detectron2.modeling import build_model

from sact_det.apps.convert_tf import Conversion, classifier_config, convert_official_checkpoint
from sact_det.apps.tf_variables import OfficialModel, official_variables
from sact_det.config import get_sact_cfg
from sact_det.config.model_zoo import CONFIG_ROOT

TINY_UNITS = (2, 3, 2, 2)
HALTING_TYPES = ("sact", "act", "none")


def tiny_checkpoint(tmp_path, halting, training_extras=False, change=None):
    """(prefix, values) of a tiny official network written by TensorFlow;
    ``change(values)`` edits the values before they are written."""
    values = random_values(slim_variables(halting, TINY_UNITS), seed=HALTING_TYPES.index(halting))
    if change:
        change(values)
    return write_checkpoint(str(tmp_path / "model.ckpt"), values, training_extras), values


def hwio_to_oihw(value):
    return value.transpose(3, 2, 0, 1)


def expected_tensors(values, halting):
    """The PyTorch name and value of each TF variable, by the rules written out
    one by one (README, "The authors' models"), independently of the converter's table."""
    out = {"backbone.stem.conv1.weight": hwio_to_oihw(values["resnet_v2/conv1/weights"]),
           "backbone.stem.conv1.bias": values["resnet_v2/conv1/biases"],
           "linear.weight": values["resnet_v2/logits/weights"][0, 0].T,
           "linear.bias": values["resnet_v2/logits/biases"]}
    bn = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    for leaf, torch_leaf in bn.items():
        out[f"backbone.postnorm.{torch_leaf}"] = values[f"resnet_v2/postnorm/{leaf}"]
    for b, n in enumerate(TINY_UNITS, start=1):
        for u in range(1, n + 1):
            tf_unit, unit = f"resnet_v2/block{b}/unit_{u}/bottleneck_v2", f"backbone.res{b + 1}.{u - 1}"
            for leaf, torch_leaf in bn.items():
                out[f"{unit}.preact.{torch_leaf}"] = values[f"{tf_unit}/preact/{leaf}"]
                for conv in ("conv1", "conv2"):
                    out[f"{unit}.{conv}.norm.{torch_leaf}"] = values[f"{tf_unit}/{conv}/BatchNorm/{leaf}"]
            for conv in ("conv1", "conv2", "conv3") + (("shortcut",) if u == 1 else ()):
                out[f"{unit}.{conv}.weight"] = hwio_to_oihw(values[f"{tf_unit}/{conv}/weights"])
            for conv in ("conv3",) + (("shortcut",) if u == 1 else ()):
                out[f"{unit}.{conv}.bias"] = values[f"{tf_unit}/{conv}/biases"]
            if halting == "none" or u == n:
                continue
            tf_branch, branch = f"resnet_v2/block{b}/unit_{u}/halting_proba", f"backbone.res{b + 1}.halting.{u - 1}"
            for leaf, torch_leaf in bn.items():
                out[f"{branch}.global_norm.{torch_leaf}"] = values[f"{tf_branch}/global_bn/{leaf}"]
            out[f"{branch}.global_logit.weight"] = values[f"{tf_branch}/global_conv/weights"][0, 0].T
            if halting == "act":
                out[f"{branch}.bias"] = values[f"{tf_branch}/global_conv/biases"]
            else:
                for leaf, torch_leaf in bn.items():
                    out[f"{branch}.local_norm.{torch_leaf}"] = values[f"{tf_branch}/local_bn/{leaf}"]
                out[f"{branch}.spatial_logit.weight"] = hwio_to_oihw(values[f"{tf_branch}/local_conv/weights"])
                out[f"{branch}.bias"] = values[f"{tf_branch}/local_conv/biases"]
    return out


@pytest.mark.parametrize("halting", HALTING_TYPES)
def test_every_variable_lands_in_its_place(tmp_path, halting):
    prefix, values = tiny_checkpoint(tmp_path, halting)
    conversion, config = convert_official_checkpoint(prefix, str(tmp_path / "converted.pth"))
    assert conversion.model == OfficialModel(halting=halting, units=TINY_UNITS, bottleneck=4, stem=64,
                                             num_classes=10)
    assert config == str(tmp_path / "converted.yaml")
    written = yaml.safe_load(open(config))
    base = {"sact": "sact", "act": "act", "none": "dense"}[halting]
    assert written["_BASE_"] == os.path.join(CONFIG_ROOT, f"imagenet/{base}_R101_preact.yaml")
    assert written["MODEL"]["WEIGHTS"] == str(tmp_path / "converted.pth")
    assert written["MODEL"]["SACT"] == {"TYPE": halting, "UNIT_TYPE": "pre_activation", "HALTING_NORM": True,
                                       "HALTING_PADDING": "zeros", "NUM_UNITS": [2, 3, 2], "RES5_NUM_UNITS": 2}
    assert written["MODEL"]["RESNETS"] == {"STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 16, "WIDTH_PER_GROUP": 4}
    assert written["MODEL"]["CLASSIFIER"] == {"NUM_CLASSES": 10}
    # the official input: RGB scaled to [-1, 1]
    assert written["INPUT"] == {"FORMAT": "RGB"}
    assert written["MODEL"]["PIXEL_MEAN"] == written["MODEL"]["PIXEL_STD"] == [127.5] * 3
    expected = expected_tensors(values, halting)
    assert len(expected) == len(values)  # one parameter per TF variable
    saved = torch.load(tmp_path / "converted.pth", map_location="cpu", weights_only=True)
    assert saved["matching_heuristics"] is False and "mfigurnov/sact" in saved["__author__"]
    assert sorted(saved["model"]) == sorted(expected)
    for name, value in expected.items():
        tensor = saved["model"][name]
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), name
        np.testing.assert_array_equal(tensor.numpy(), value, err_msg=name)


def test_full_size_names_match_the_official_graph():
    """ResNet-101's variable counts of a TF-Slim graph built from the official code
    (863 SACT, 718 ACT, 544 plain variables; 45,193,734 / 44,820,998 / 44,677,609
    values, BN statistics included) and their names and shapes."""
    counts = {"sact": (863, 45_193_734), "act": (718, 44_820_998), "none": (544, 44_677_609)}
    for halting, (num_variables, num_values) in counts.items():
        table = official_variables(OfficialModel(halting=halting, units=(3, 4, 23, 3), bottleneck=64, stem=64,
                                                 num_classes=1001))
        assert {n: v.shape for n, v in table.items()} == dict(slim_variables(halting, (3, 4, 23, 3), 64, 64, 1001))
        assert len(table) == num_variables
        assert sum(int(np.prod(v.shape)) for v in table.values()) == num_values
        assert len({v.target for v in table.values()}) == num_variables  # no two land in one place


def test_the_released_resnet101_gets_the_r101_config():
    model = OfficialModel(halting="sact", units=(3, 4, 23, 3), bottleneck=64, stem=64, num_classes=1001)
    config = classifier_config(Conversion(model=model, state_dict={}, num_classes=1000, ignored=[]), "w/r101.pth")
    assert config["MODEL"]["RESNETS"] == {"STEM_OUT_CHANNELS": 64, "RES2_OUT_CHANNELS": 256, "WIDTH_PER_GROUP": 64,
                                          "DEPTH": 101}
    assert (config["MODEL"]["SACT"]["NUM_UNITS"], config["MODEL"]["SACT"]["RES5_NUM_UNITS"]) == ([3, 4, 23], 3)
    assert config["MODEL"]["WEIGHTS"] == os.path.abspath("w/r101.pth")


def test_training_only_variables_are_left_out_and_listed(tmp_path, sact_log, capsys):
    prefix, values = tiny_checkpoint(tmp_path, "sact", training_extras=True)
    conversion, _ = convert_official_checkpoint(prefix, str(tmp_path / "converted.pth"))
    moving = [n for n in values if "moving_" in n]
    assert len(conversion.ignored) == 1 + (len(values) - len(moving)) + len(values)  # step, momentum, averages
    assert "global_step" in conversion.ignored
    assert "resnet_v2/logits/weights/Momentum" in conversion.ignored
    assert "resnet_v2/postnorm/moving_mean/ExponentialMovingAverage" in conversion.ignored
    assert f"left out {len(conversion.ignored)} training-only variable(s)" in sact_log.text
    assert "global_step" in sact_log.text
    assert load_tool("convert_sact_tf_checkpoint").main([prefix, str(tmp_path / "tool.pth")]) == 0
    printed = capsys.readouterr().out
    assert f"left out {len(conversion.ignored)} training-only variable(s): global_step, resnet_v2/" in printed


def test_the_background_output_is_left_out_unless_kept(tmp_path, capsys):
    """ImageNet models (1001 outputs, 0 = TF-Slim's background): output i of the
    converted model is TF's output i + 1, the i-th synset in sorted order."""
    values = random_values(slim_variables("sact", TINY_UNITS, classes=1001))
    prefix = write_checkpoint(str(tmp_path / "model.ckpt"), values)
    weights, biases = values["resnet_v2/logits/weights"][0, 0].T, values["resnet_v2/logits/biases"]
    tool = load_tool("convert_sact_tf_checkpoint")
    for name, options, first in (("imagenet", [], 1), ("kept", ["--keep-background"], 0)):
        assert tool.main([prefix, str(tmp_path / f"{name}.pth"), *options]) == 0
        assert f"{1001 - first} classes" in capsys.readouterr().out
        state = torch.load(tmp_path / f"{name}.pth", weights_only=True)["model"]
        np.testing.assert_array_equal(state["linear.weight"].numpy(), weights[first:])
        np.testing.assert_array_equal(state["linear.bias"].numpy(), biases[first:])
        assert yaml.safe_load(open(tmp_path / f"{name}.yaml"))["MODEL"]["CLASSIFIER"] == {"NUM_CLASSES": 1001 - first}


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_an_unmappable_variable_is_refused_by_name(tmp_path, capsys):
    def add_strays(values):
        values["resnet_v2/block2/unit_3/halting_proba/local_conv/weights"] = np.zeros((3, 3, 32, 1), np.float32)
        values["resnet_v2/extra/weights"] = np.zeros((1, 1, 4, 4), np.float32)
    prefix, _ = tiny_checkpoint(tmp_path, "sact", change=add_strays)
    output = tmp_path / "converted.pth"
    assert load_tool("convert_sact_tf_checkpoint").main([prefix, str(output)]) == 2
    line = one_error_line(capsys)
    assert "2 variable(s) that map to no parameter" in line
    # the last unit of a block has no halting branch; "extra" is no part of the network
    assert "resnet_v2/block2/unit_3/halting_proba/local_conv/weights" in line and "resnet_v2/extra/weights" in line
    assert not output.exists()


def test_a_missing_or_misshapen_variable_is_refused_by_name(tmp_path, capsys):
    def break_two(values):
        del values["resnet_v2/block3/unit_1/bottleneck_v2/shortcut/biases"]
        values["resnet_v2/block1/unit_2/bottleneck_v2/conv2/weights"] = np.zeros((1, 1, 4, 4), np.float32)
    prefix, _ = tiny_checkpoint(tmp_path, "act", change=break_two)
    output = tmp_path / "converted.pth"
    assert load_tool("convert_sact_tf_checkpoint").main([prefix, str(output)]) == 2
    line = one_error_line(capsys)
    assert "1 parameter(s) without a value, absent: resnet_v2/block3/unit_1/bottleneck_v2/shortcut/biases" in line
    assert "resnet_v2/block1/unit_2/bottleneck_v2/conv2/weights [1, 1, 4, 4] (expected [3, 3, 4, 4])" in line
    assert not output.exists()


def test_not_a_checkpoint_gives_one_line(tmp_path, capsys):
    tool = load_tool("convert_sact_tf_checkpoint")
    assert tool.main([str(tmp_path / "absent.ckpt"), str(tmp_path / "out.pth")]) == 2
    assert "no TensorFlow checkpoint at" in one_error_line(capsys)
    (tmp_path / "junk.ckpt.index").write_bytes(b"not a checkpoint")
    assert tool.main([str(tmp_path / "junk.ckpt"), str(tmp_path / "out.pth")]) == 2
    assert "cannot read" in one_error_line(capsys)


def test_without_tensorflow_the_tool_says_what_to_install(tmp_path, capsys, monkeypatch):
    prefix, _ = tiny_checkpoint(tmp_path, "none")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
    assert load_tool("convert_sact_tf_checkpoint").main([prefix, str(tmp_path / "out.pth")]) == 2
    assert one_error_line(capsys).endswith('needs TensorFlow: pip install "sact-det[tf]"')


def classifier_from(config):
    cfg = get_sact_cfg(config, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    saved = torch.load(cfg.MODEL.WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"], strict=True)  # no parameter missing, none unexpected
    return cfg, model


@pytest.mark.parametrize("halting", HALTING_TYPES)
def test_converted_classifier_computes_the_official_network(tmp_path, halting):
    """The converted tiny network in sact-det's classifier against the same
    network in TensorFlow ops (official_tf.official_forward): logits, and each
    block's ponder cost and units, at an even and an odd input size (TF's "SAME"
    pooling pads them differently)."""
    prefix, values = tiny_checkpoint(tmp_path, halting)
    _, config = convert_official_checkpoint(prefix, str(tmp_path / "converted.pth"))
    cfg, model = classifier_from(config)
    assert (cfg.MODEL.SACT.TYPE, cfg.MODEL.SACT.UNIT_TYPE, cfg.MODEL.SACT.HALTING_NORM) == \
        (halting, "pre_activation", True)
    assert tuple(cfg.MODEL.SACT.NUM_UNITS) + (cfg.MODEL.SACT.RES5_NUM_UNITS,) == TINY_UNITS
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == list(cfg.MODEL.PIXEL_STD) == [127.5] * 3
    logits = {}
    model.linear.register_forward_hook(lambda module, inputs, output: logits.__setitem__("ours", output))
    halted_early = 0
    for height, width in ((224, 224), (75, 61)):
        images = np.random.default_rng(height).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
        theirs = official_forward(values, images, halting, TINY_UNITS)
        with torch.no_grad():  # the official input in [-1, 1] is (pixel - 127.5) / 127.5
            outputs = model([{"image": torch.from_numpy(image).permute(2, 0, 1) * 127.5 + 127.5}
                             for image in images])
        scale = np.abs(theirs["logits"]).max()
        np.testing.assert_allclose(logits["ours"].numpy(), theirs["logits"], rtol=0, atol=1e-5 * scale)
        if halting == "none":
            continue
        for block, name in enumerate(("res2", "res3", "res4", "res5"), start=1):
            ponder = np.stack([out["sact"].ponder_maps[name].numpy() for out in outputs])
            units = [out["sact"].units_per_block[name] for out in outputs]
            np.testing.assert_allclose(ponder, np.broadcast_to(theirs[f"block{block}/ponder_cost"], ponder.shape),
                                       rtol=0, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(units, theirs[f"block{block}/num_units"].mean((1, 2)), rtol=0, atol=1e-6)
            halted_early += int((theirs[f"block{block}/num_units"] < TINY_UNITS[block - 1]).sum())
    if halting != "none":
        assert halted_early > 0  # the halting path is exercised, not only "every unit everywhere"

