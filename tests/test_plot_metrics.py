"""Training curves from metrics.json (tools/plot_metrics.py)."""
import json
import os

import matplotlib.pyplot as plt
import pytest
from conftest import load_tool
from PIL import Image

from sact_det.apps.curves import metric_series, metrics_figure, panel_keys, read_metrics


def write_run(folder, iterations=range(19, 200, 20), ap_every=100, lr=0.02, truncated=False):
    """A metrics.json as Detectron2's JSONWriter writes it for a SACT run."""
    folder.mkdir(parents=True)
    lines = []
    for it in iterations:
        lines.append(json.dumps({
            "iteration": it, "total_loss": 2.0 - it / 200, "loss_cls": 1.0 - it / 400, "loss_box_reg": 0.5,
            "loss_rpn_cls": 0.2, "loss_rpn_loc": 0.1, "loss_ponder": 0.1 - it / 4000, "lr": lr,
            "sact/ponder_cost/res2": 4.0, "sact/ponder_cost/res3": 5.0 - it / 100, "sact/ponder_cost/total": 9.0,
            "sact/units/res2": 3.0, "sact/units/res3": 4.0, "time": 0.5, "data_time": 0.01, "eta_seconds": 10}))
        if (it + 1) % ap_every == 0:
            lines.append(json.dumps({"iteration": it, "bbox/AP": it / 10, "bbox/AP50": it / 5,
                                     "sact/FLOPs_pct": 90 - it / 10}))
    text = "\n".join(lines) + "\n"
    if truncated:
        text += '{"iteration": 219, "total_lo'  # interrupted while writing
    (folder / "metrics.json").write_text(text)
    return folder


def test_series_keep_the_last_value_of_a_resumed_iteration(tmp_path, caplog):
    run = write_run(tmp_path / "run", truncated=True)
    with open(run / "metrics.json", "a") as f:  # resumed from iteration 99: 119 written again,
        # glued to the line the interrupted run left unfinished, then a line of its own
        f.write(json.dumps({"iteration": 99, "total_loss": 6.0}) + "\n")
        f.write(json.dumps({"iteration": 119, "total_loss": 7.0}) + "\n")
    records = read_metrics(str(run / "metrics.json"))
    assert "skipped 1 line(s)" in caplog.text
    series = metric_series(records)
    iterations, values = series["total_loss"]
    assert list(iterations) == list(range(19, 200, 20)) and values[5] == 7.0
    assert values[4] == pytest.approx(2.0 - 99 / 200)  # the record glued to the cut line is lost
    assert list(series["bbox/AP"][0]) == [99, 199]


def test_panels_in_order():
    series = {k: None for k in ["lr", "bbox/AP", "loss_ponder", "loss_cls", "total_loss", "time",
                                "sact/units/res2", "sact/ponder_cost/total", "sact/ponder_cost/res2",
                                "bbox/AP50", "loss_box_reg"]}
    assert panel_keys([series]) == ["total_loss", "loss_box_reg", "loss_cls", "loss_ponder",
                                    "sact/ponder_cost/res2", "sact/ponder_cost/total", "sact/units/res2",
                                    "lr", "bbox/AP"]


def test_two_runs_overlaid(tmp_path, capsys):
    a = write_run(tmp_path / "tau0.005")
    b = write_run(tmp_path / "tau0.001", iterations=range(19, 120, 20), lr=0.01)
    out = tmp_path / "plots" / "curves.png"
    assert load_tool("plot_metrics").main([str(a), str(b / "metrics.json"), "--output", str(out)]) == 0
    assert "14 curves of 2 run(s)" in capsys.readouterr().out
    image = Image.open(out)
    assert image.format == "PNG" and image.size[0] > 800
    assert os.listdir(out.parent) == ["curves.png"]


def test_figure_content(tmp_path):
    runs = [write_run(tmp_path / "a"), write_run(tmp_path / "b", lr=0.01)]
    fig = metrics_figure([metric_series(read_metrics(str(r / "metrics.json"))) for r in runs], ["first", "second"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "total_loss" and "loss_ponder" in titles and "bbox/AP" in titles
    lr_axis = fig.axes[titles.index("lr")]
    assert [line.get_label() for line in lr_axis.lines] == ["first", "second"]
    assert [line.get_ydata()[0] for line in lr_axis.lines] == [0.02, 0.01]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["first", "second"]
    plt.close(fig)


def test_bad_inputs(tmp_path, capsys):
    tool = load_tool("plot_metrics")
    out = tmp_path / "c.png"
    (tmp_path / "empty_run").mkdir()
    assert tool.main([str(tmp_path / "empty_run"), "--output", str(out)]) == 2
    assert "OUTPUT_DIR" in capsys.readouterr().err
    bad = write_run(tmp_path / "bad")
    (bad / "metrics.json").write_text("not json\n[1, 2]\n")
    assert tool.main([str(bad), "--output", str(out)]) == 2
    assert "metrics.json: no metrics recorded" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([str(bad), "--output", str(tmp_path / "c.jpg")])
    assert "argument --output: expected a file name ending in .png" in capsys.readouterr().err
    good = write_run(tmp_path / "good")
    assert tool.main([str(good), "--labels", "a", "b", "--output", str(out)]) == 2
    assert "--labels: expected one label per run" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_with_two_test_sets_gets_an_ap_and_a_flops_panel_per_set(tmp_path, capsys):
    """Detectron2 prefixes each evaluation result with its dataset when a run has
    several test sets (the demo's synthetic_val and synthetic_val_heldout; issue 24, item 2)."""
    run = write_run(tmp_path / "demo", ap_every=1000)  # training curves only
    with open(run / "metrics.json", "a") as f:
        for it in (99, 199):
            f.write(json.dumps({"iteration": it, **{f"{name}/{key}": value for name in ("synthetic_val",
                                                                                         "synthetic_val_heldout")
                                                    for key, value in (("bbox/AP", it / 10), ("bbox/AP50", it / 5),
                                                                       ("sact/FLOPs_pct", 90 - it / 10))}}) + "\n")
    series = metric_series(read_metrics(str(run / "metrics.json")))
    keys = panel_keys([series])
    assert keys[-4:] == ["synthetic_val/bbox/AP", "synthetic_val_heldout/bbox/AP",
                         "synthetic_val/sact/FLOPs_pct", "synthetic_val_heldout/sact/FLOPs_pct"]
    assert not any("AP50" in k for k in keys)
    fig = metrics_figure([series], ["demo"])
    panel = next(ax for ax in fig.axes if ax.get_title() == "synthetic_val_heldout/bbox/AP")
    assert list(panel.lines[0].get_ydata()) == [9.9, 19.9]
    plt.close(fig)
    out = tmp_path / "curves.png"
    assert load_tool("plot_metrics").main([str(run), "--output", str(out)]) == 0
    assert f"{len(keys)} curves of 1 run(s)" in capsys.readouterr().out


@pytest.mark.parametrize("extension, magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".PNG", b"\x89PNG")])
def test_the_extension_chooses_the_format(tmp_path, extension, magic):
    """PDF and SVG besides PNG (issue 24, item 8)."""
    out = tmp_path / f"curves{extension}"
    assert load_tool("plot_metrics").main([str(write_run(tmp_path / "run")), "--output", str(out)]) == 0
    assert out.read_bytes().startswith(magic)
