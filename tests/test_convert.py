"""torchvision ResNets converted to Detectron2 names (tools/convert_torchvision_to_d2.py)."""
import os
import pickle

import pytest
import torch
import torchvision
from conftest import load_tool, tiny_cfg

from detectron2.modeling import build_model

from sact_det.apps.torchvision_weights import TORCHVISION_CONFIG
from sact_det.engine.checkpoint import SACTCheckpointer

R50 = ("MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.SACT.TYPE", "none",
       "MODEL.RESNETS.STEM_OUT_CHANNELS", "64", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256",
       "MODEL.RESNETS.WIDTH_PER_GROUP", "64", "MODEL.SACT.RES5_NUM_UNITS", "3")


@pytest.fixture(scope="module")
def torchvision_r50(tmp_path_factory):
    """A random torchvision ResNet-50 whose batch norms are far from identity,
    saved as torchvision saves its checkpoints (a plain state dict)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("tv") / "r50.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_converted_resnet50_gives_torchvision_features(torchvision_r50, tmp_path, capsys):
    model, source = torchvision_r50
    converted = tmp_path / "R-50-tv.pkl"
    assert load_tool("convert_torchvision_to_d2").main([str(source), str(converted)]) == 0
    printed = capsys.readouterr().out
    assert "INPUT.FORMAT RGB" in printed and "MODEL.RESNETS.DEPTH 50" in printed
    payload = pickle.load(open(converted, "rb"))
    assert payload["matching_heuristics"] is True and "res5.2.conv3.norm.running_var" in payload["model"]
    assert not any(k.startswith("fc.") for k in payload["model"])

    cfg = tiny_cfg(*R50, *TORCHVISION_CONFIG, "MODEL.WEIGHTS", str(converted))
    detector = build_model(cfg).eval()
    SACTCheckpointer(detector).load(cfg.MODEL.WEIGHTS)  # errors on any missing backbone/res5 weight
    res5 = detector.state_dict()["roi_heads.res5.2.conv3.norm.running_var"]  # res5 went to the box head
    assert torch.equal(res5, model.layer4[2].bn3.running_var)

    rgb = torch.randint(0, 256, (3, 72, 88), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        # sact-det: the image as the detector takes it (INPUT.FORMAT RGB, 0-255), its own normalisation.
        images = detector.preprocess_image([{"image": rgb}])
        ours = detector.backbone(images.tensor)["res4"]
        # torchvision: [0, 1] RGB normalised by ImageNet's mean and std, conv1 .. layer3.
        x = (rgb / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / \
            torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        x = model.maxpool(model.relu(model.bn1(model.conv1(x[None]))))
        theirs = model.layer3(model.layer2(model.layer1(x)))
    assert ours.shape == theirs.shape == (1, 1024, 5, 6)
    assert theirs.abs().max() > 1e-3  # a non-trivial comparison
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_inputs_give_one_line_and_no_output(tmp_path, capsys):
    tool = load_tool("convert_torchvision_to_d2")
    out = tmp_path / "out.pkl"
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(tmp_path / "absent.pth"), str(out)])
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert "argument input" in line and "absent.pth" in line and "expected an existing file" in line

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    assert tool.main([str(tmp_path / "notes.pth"), str(out)]) == 2
    assert "cannot read" in one_error_line(capsys)

    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    assert tool.main([str(tmp_path / "other.pth"), str(out)]) == 2
    assert "expected a torchvision ResNet state dict" in one_error_line(capsys)

    with pytest.raises(SystemExit):
        tool.main([str(tmp_path / "other.pth"), str(tmp_path / "out.pth")])
    line = one_error_line(capsys)
    assert "argument output" in line and ".pkl" in line
    assert sorted(os.listdir(tmp_path)) == ["notes.pth", "other.pth"]  # nothing written, not even partly
