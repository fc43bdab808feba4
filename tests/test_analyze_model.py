"""Parameters and FLOPs of SACT detectors (tools/analyze_model.py)."""
import re

import pytest
import torch
from conftest import config_path, load_tool, tiny_cfg

from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

from sact_det.apps.analysis import analyze_model, parameter_table
from sact_det.modeling.report import SACTReport


def table_value(text: str, row: str, column: int = 1) -> str:
    """A cell of a pipe table row, by the row's label."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[column]
    raise AssertionError(f"no row {row!r} in\n{text}")


def number(cell: str) -> float:
    return float(cell.replace(",", "").split("±")[0])


def test_parameters_count_halting_apart():
    model = build_model(tiny_cfg())
    text = parameter_table(model)
    halting = sum(p.numel() for n, p in model.named_parameters() if ".halting." in n)
    res3 = sum(p.numel() for p in model.backbone.res3.parameters())
    res3_halting = sum(p.numel() for p in model.backbone.res3.halting.parameters())
    assert number(table_value(text, "backbone.res3.halting")) == res3_halting > 0
    assert number(table_value(text, "backbone.res3 (units)")) == res3 - res3_halting
    assert number(table_value(text, "total")) == sum(p.numel() for p in model.parameters())
    assert f"halting branches: {halting:,} parameters" in text


def test_flops_at_sizes_follow_the_halting(monkeypatch):
    """fvcore's counts are the modules' own, x2; a block that halts early shows
    it in both counts; fields the report gains are printed too."""
    cfg = tiny_cfg()
    monkeypatch.setattr(SACTReport, "record", lambda self, original=SACTReport.record: dict(
        original(self), detector_flops=12345))  # as a future whole-detector field would be
    torch.manual_seed(0)
    text = analyze_model(cfg, ["flop"], sizes=[(64, 96)])
    torch.manual_seed(0)  # the same seed: the same random weights as the tool's
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 64, 96), generator=torch.Generator().manual_seed(0)).float()
    inputs = [{"image": image, "height": 64, "width": 96}]
    fvcore = FlopCountAnalysis(model, inputs).by_module()
    assert number(table_value(text, "backbone.res4.halting")) == pytest.approx(
        2 * fvcore["model.backbone.res4.halting"], rel=1e-3)
    with torch.no_grad():
        report = model(inputs)[0]["sact"]
    assert number(table_value(text, "flops")) == pytest.approx(report.flops, rel=1e-3)
    assert table_value(text, "detector_flops") == "1.234e+04"

    # Halting after the first unit everywhere: both counts drop, FLOPs fall below dense.
    torch.manual_seed(0)
    early = analyze_model(tiny_cfg("MODEL.SACT.HALTING_BIAS_INIT", "10.0"), ["flop"], sizes=[(64, 96)])
    assert number(table_value(early, "backbone.res4 (units)")) < 0.3 * number(
        table_value(text, "backbone.res4 (units)"))
    assert number(table_value(early, "flops_pct")) < 50 < number(table_value(text, "flops_pct"))
    assert number(table_value(early, "units_per_block/res4")) == 1


def test_tool_on_dataset_images(synthetic_root, capsys):
    status = load_tool("analyze_model").main([
        "--config-file", config_path("synthetic/sact_tiny.yaml"), "--tasks", "flop", "structure",
        "--num-inputs", "2", "--opts", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "96",
        "INPUT.MAX_SIZE_TEST", "128", "MODEL.RPN.POST_NMS_TOPK_TEST", "16"])
    out = capsys.readouterr().out
    assert status == 0
    assert "2 images of synthetic_val" in out
    assert re.search(r"\| flops_pct +\| +[\d.]+ ± [\d.]+ \|", out)
    assert "(MODEL.WEIGHTS is empty" in out and "Structure:\nSACTRCNN(" in out


def test_bad_arguments(capsys, tmp_path):
    tool = load_tool("analyze_model")
    config = config_path("synthetic/sact_tiny.yaml")
    with pytest.raises(SystemExit):
        tool.main(["--config-file", config, "--sizes", "600"])
    assert "argument --sizes: expected HEIGHTxWIDTH in pixels (e.g. 600x800), got '600'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", config, "--tasks", "speed"])
    assert "argument --tasks: invalid choice: 'speed'" in capsys.readouterr().err
    assert tool.main(["--config-file", config, "--opts", "MODEL.SACT.TAUU", "0.1"]) == 2
    assert "unknown config key MODEL.SACT.TAUU" in capsys.readouterr().err
    assert tool.main(["--config-file", config, "--opts", "MODEL.WEIGHTS", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err
