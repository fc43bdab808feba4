"""The training data with its boxes (tools/visualize_data.py)."""
import os

import numpy as np
import pytest
from conftest import config_path, load_tool, tiny_cfg
from PIL import Image

from detectron2.data import DatasetCatalog

from sact_det.apps.browse import annotation_images

CONFIG = config_path("synthetic/sact_tiny.yaml")


def test_annotations_are_drawn(synthetic_root):
    cfg = tiny_cfg("DATASETS.TRAIN", '("synthetic_val",)')
    file_name, drawn = next(annotation_images(cfg))
    record = DatasetCatalog.get("synthetic_val")[0]
    original = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    assert file_name == record["file_name"] and drawn.shape == original.shape
    # The drawing changes the pixels along an annotated box's outline (2 px either
    # side of it) much more than the pixels far from every box.
    changed = np.abs(drawn.astype(int) - original.astype(int)).sum(-1)
    yy, xx = np.mgrid[:changed.shape[0], :changed.shape[1]]
    x0, y0, w, h = record["annotations"][0]["bbox"]
    inside_outer = (xx >= x0 - 2) & (xx <= x0 + w + 2) & (yy >= y0 - 2) & (yy <= y0 + h + 2)
    inside_inner = (xx > x0 + 2) & (xx < x0 + w - 2) & (yy > y0 + 2) & (yy < y0 + h - 2)
    far = np.ones_like(changed, dtype=bool)
    for annotation in record["annotations"]:
        x, y, bw, bh = annotation["bbox"]
        far &= ~((xx >= x - 25) & (xx <= x + bw + 25) & (yy >= y - 25) & (yy <= y + bh + 25))
    assert far.any()
    assert changed[inside_outer & ~inside_inner].mean() > 3 * changed[far].mean() + 5


@pytest.mark.parametrize("source", ["annotation", "dataloader"])
def test_tool_writes_the_images(synthetic_root, tmp_path, capsys, source):
    out = tmp_path / "vis"
    status = load_tool("visualize_data").main([
        "--config-file", CONFIG, "--source", source, "--output", str(out), "--num", "3",
        "--opts", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(96,)",
        "INPUT.MAX_SIZE_TRAIN", "128"])
    assert status == 0 and "3 image(s) written" in capsys.readouterr().out
    files = sorted(os.listdir(out))
    assert len(files) == 3 and all(f.endswith(".jpg") and f[:4].isdigit() for f in files)
    sizes = [Image.open(out / f).size for f in files]
    if source == "dataloader":  # resized by the augmentation: short side 96 unless the long one exceeds 128
        assert all(max(s) <= 128 and min(s) <= 96 and (min(s) == 96 or max(s) == 128) for s in sizes)
    else:  # as stored: 120-160 x 150-200
        assert all(120 <= s[1] <= 160 and 150 <= s[0] <= 200 for s in sizes)


def test_bad_arguments(synthetic_root, tmp_path, capsys):
    tool = load_tool("visualize_data")
    with pytest.raises(SystemExit):
        tool.main(["--config-file", CONFIG, "--source", "disk", "--output", str(tmp_path)])
    assert "argument --source: invalid choice: 'disk'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", CONFIG, "--source", "annotation", "--output", str(tmp_path), "--num", "0"])
    assert "argument --num: expected a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(["--config-file", str(tmp_path / "none.yaml"), "--source", "annotation", "--output", "x"])
    assert "argument --config-file: expected an existing file" in capsys.readouterr().err
    status = tool.main(["--config-file", CONFIG, "--source", "annotation", "--output", str(tmp_path / "o"),
                        "--opts", "DATASETS.TRAIN", '("no_such_dataset",)'])
    assert status == 2 and "dataset 'no_such_dataset' is not registered" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
