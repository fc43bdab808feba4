"""TorchScript export (sact_det.apps.export, tools/deploy/export_model.py)."""
import json
import os
import warnings

import pytest
import torch
from conftest import config_path, load_tool, tiny_cfg

from detectron2.modeling import build_model

from sact_det.apps.export import ExportError, export_torchscript, output_names, traceable_inference
from sact_det.modeling.sact.adaptive_stage import every_unit_evaluated


def image(seed, height, width, low, high):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (3, height, width), generator=generator).float()


def res2_first_unit_mean(model, img):
    with torch.no_grad():
        x = model.backbone.stem(model.preprocess_image([{"image": img}]).tensor)
        return model.backbone.res2.units[0](x).mean().item()


def halting_on_bright_images(model, bright, dark):
    """res2 halts everywhere after its first unit on ``bright`` and continues on
    ``dark``: halting score sigmoid(c (mean(x) - t)) with t between the two."""
    high, low = res2_first_unit_mean(model, bright), res2_first_unit_mean(model, dark)
    assert high != low
    sign, threshold, c = (1.0 if high > low else -1.0), (high + low) / 2, 200.0 / abs(high - low)
    with torch.no_grad():
        for branch in model.backbone.res2.halting:
            branch.spatial_logit.weight.zero_()
            branch.global_logit.weight.fill_(sign * c / branch.global_logit.in_features)
            branch.bias.fill_(-sign * c * threshold)


def load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        extra = {"sact_outputs.json": ""}
        return torch.jit.load(path, _extra_files=extra), json.loads(extra["sact_outputs.json"])


def test_exported_model_equals_eager_on_another_image(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    traced_on, other = image(1, 96, 128, 180, 256), image(2, 80, 144, 0, 80)
    halting_on_bright_images(model, traced_on, other)
    with torch.no_grad():  # the example image stops res2 early; the other does not
        assert traceable_inference(model, [{"image": traced_on}])[4].max() == 1  # units_res2
        assert traceable_inference(model, [{"image": other}])[4].min() == 3
    path = str(tmp_path / "model.ts")
    export_torchscript(model, [{"image": traced_on}], path)
    exported, info = load(path)
    assert info["outputs"] == output_names(model) == [
        "boxes", "scores", "classes", "ponder_map_res2", "units_res2", "ponder_map_res3", "units_res3",
        "ponder_map_res4", "units_res4"]
    with torch.no_grad():
        expected = traceable_inference(model, [{"image": other}])
        actual = exported(other)
    assert len(expected[0]) > 0 and actual[3].shape == (20, 36)
    for name, e, a in zip(info["outputs"], expected, actual):
        assert e.shape == a.shape, name
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4, msg=name)


def test_tracing_keeps_the_early_stop_without_the_flag():
    """Why the flag exists: a block traced where every position halted early
    would skip its later units on every image."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval().requires_grad_(False)
    bright, dark = image(1, 64, 64, 180, 256), image(2, 64, 64, 0, 80)
    halting_on_bright_images(model, bright, dark)
    stage = model.backbone.res2
    x_bright, x_dark = (model.backbone.stem(model.preprocess_image([{"image": i}]).tensor) for i in (bright, dark))

    def ponder(x):
        return stage(x).ponder_map

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.trace(ponder, (x_bright,), check_trace=False)
        with every_unit_evaluated(stage):
            dense = torch.jit.trace(ponder, (x_bright,), check_trace=False)
        eager = ponder(x_dark)
        assert eager.min() > 2.5  # all three units everywhere on the dark image
        assert not torch.allclose(frozen(x_dark), eager)
        torch.testing.assert_close(dense(x_dark), eager)


@pytest.mark.parametrize("opts, reason", [
    (("MODEL.SACT.EXECUTION", "perforated"), "data-dependent shapes"),
    (("MODEL.SACT.EXECUTION", "tiled", "MODEL.SACT.TILE_SIZE", "4"), "data-dependent shapes"),
    (("MODEL.SACT.TILE_SIZE", "4"), "only fit the example image's size"),
])
def test_executions_that_cannot_be_exported_say_why(opts, reason, tmp_path):
    model = build_model(tiny_cfg(*opts)).eval()
    with pytest.raises(ExportError, match=reason):
        export_torchscript(model, [{"image": image(0, 64, 64, 0, 256)}], str(tmp_path / "m.ts"))
    assert not os.listdir(tmp_path)


def test_tool(synthetic_root, tmp_path, capsys):
    tool = load_tool("deploy/export_model")
    config = config_path("synthetic/sact_tiny.yaml")
    small = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
             "DATALOADER.NUM_WORKERS", "0"]
    assert tool.main(["--config-file", config, "--output", str(tmp_path / "out"), "--opts", *small]) == 0
    assert "model.ts" in capsys.readouterr().out
    exported, info = load(str(tmp_path / "out" / "model.ts"))
    assert info["outputs"][:3] == ["boxes", "scores", "classes"]
    with torch.no_grad():
        assert len(exported(image(3, 64, 80, 0, 256))) == 9
    # Outside no_grad too, the outputs carry no autograd graph (issue 24, item 8).
    assert all(o.grad_fn is None and not o.requires_grad for o in exported(image(3, 64, 80, 0, 256)))
    # Detectron2's flag for this path; other methods and formats are refused, saying why.
    assert tool.main(["--config-file", config, "--output", str(tmp_path / "o5"), "--export-method", "tracing",
                      *small]) == 0
    assert tool.main(["--config-file", config, "--output", str(tmp_path / "o6"), "--export-method", "scripting"]) == 2
    assert "--export-method scripting: not provided: only tracing" in capsys.readouterr().err
    assert "onnx" not in tool.build_parser().format_help().split("--format")[1].split("\n")[0]

    assert tool.main(["--config-file", config, "--output", str(tmp_path / "o2"), "--opts", *small,
                      "MODEL.SACT.EXECUTION", "perforated"]) == 2
    assert "MODEL.SACT.EXECUTION perforated cannot be exported" in capsys.readouterr().err
    assert tool.main(["--config-file", config, "--output", str(tmp_path / "o3"), "--format", "onnx"]) == 2
    assert "--format onnx: not provided" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", config, "--output", str(tmp_path / "o4"), "--sample-image", "none.jpg"])
    assert "argument --sample-image: expected an existing file" in capsys.readouterr().err
    assert not any(os.path.exists(tmp_path / d) for d in ("o2", "o3", "o4", "o6"))
