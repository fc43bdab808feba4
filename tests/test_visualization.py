"""Ponder cost overlays (sact_det.apps.visualization, tools/visualize_ponder.py)."""
import csv
import os
import sys
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from conftest import REPO, tiny_cfg
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from detectron2.utils.visualizer import Visualizer

from sact_det.apps.visualization import PonderVisualization, colorize, visualize, visualize_files
from sact_det.data.images import read_image_rgb
from sact_det.engine.predictor import SACTPredictor
from sact_det.modeling.maps import map_to_image
from sact_det.modeling.report import SACTReport

sys.path.insert(0, os.path.join(REPO, "tools"))
import visualize_ponder  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return SACTPredictor(tiny_cfg())


@pytest.fixture
def image_dir(tmp_path):
    """Images of several sizes and modes, and one corrupt file."""
    rng = np.random.RandomState(0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rng.randint(0, 255, (150, 200, 3), np.uint8)).save(folder / "rgb.jpg")
    Image.fromarray(rng.randint(0, 255, (97, 131), np.uint8), "L").save(folder / "gray.png")
    rgba = rng.randint(0, 255, (64, 300, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder


def test_map_to_image_keeps_cells_exact():
    grid = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # Cells of stride 4 over an 8x12 network input, shown on a 16x24 image.
    out = map_to_image(grid, (8, 12), (16, 24), stride=4)
    assert out.shape == (16, 24)
    assert np.array_equal(out[::8, ::8], grid.numpy())
    assert (out[:8, :8] == 1).all() and (out[8:, 16:] == 6).all()
    # A map whose cells overhang the input (ceil division) is cropped, not squeezed.
    out = map_to_image(torch.tensor([[1.0, 2.0]]), (3, 5), (3, 5), stride=4)
    assert out.tolist() == [[1, 1, 1, 1, 2]] * 3


def test_colour_scale_follows_the_values():
    cmap = plt.get_cmap("inferno")
    values = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    rgb = colorize(values, 1.0, 4.0)
    assert np.array_equal(rgb[0, 0], np.round(np.array(cmap(0.0)[:3]) * 255).astype(np.uint8))
    assert np.array_equal(rgb[1, 1], np.round(np.array(cmap(1.0)[:3]) * 255).astype(np.uint8))
    fixed = colorize(values, 0.0, 8.0)  # a fixed scale shared by several images
    assert np.array_equal(fixed[1, 1], np.round(np.array(cmap(0.5)[:3]) * 255).astype(np.uint8))
    assert np.array_equal(colorize(values, 2.0, 3.0)[0, 0], rgb[0, 0])  # clipped below


def test_figure_shows_min_max_and_the_colour_bar_range():
    image = np.zeros((40, 60, 3), np.uint8)
    ponder = np.tile(np.linspace(3.0, 11.0, 60, dtype=np.float32), (40, 1))
    instances = Instances((40, 60), pred_boxes=Boxes(torch.tensor([[5.0, 5.0, 20.0, 20.0]])),
                          scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    report = SACTReport(image_size=(40, 60), flops=55, flops_per_block={}, dense_flops=100, units_per_block={})
    vis = PonderVisualization(image, instances, report, ponder, {"res2": ponder})
    fig = vis.figure(score_threshold=0.5)
    heat = fig.axes[1].images[-1]
    assert heat.get_clim() == (3.0, 11.0)
    assert "min 3.00, max 11.00" in fig.axes[1].get_title() and "55%" in fig.axes[1].get_title()
    assert "1 detections" in fig.axes[0].get_title()
    assert fig.axes[1].images[-1].get_array().shape == (40, 60)
    assert vis.figure(value_range=(0.0, 20.0)).axes[1].images[-1].get_clim() == (0.0, 20.0)
    overlay = vis.overlay()
    assert overlay.shape == (40, 60, 3)
    # The brightest colour of the map sits where the ponder cost is highest.
    assert overlay[:, -1].sum() > overlay[:, 0].sum()
    plt.close("all")


def test_read_image_handles_modes(image_dir):
    assert read_image_rgb(str(image_dir / "gray.png")).shape == (97, 131, 3)
    transparent = np.zeros((4, 4, 4), np.uint8)
    transparent[..., 0] = 255  # red, fully transparent: composited on white
    Image.fromarray(transparent, "RGBA").save(image_dir / "clear.png")
    assert (read_image_rgb(str(image_dir / "clear.png")) == 255).all()


def test_directory_with_a_corrupt_file(predictor, image_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(visualize_ponder, "SACTPredictor", lambda cfg: predictor)
    out = tmp_path / "out"
    status = visualize_ponder.main(["--config-file", os.path.join(REPO, "configs/synthetic/sact_tiny.yaml"),
                                    "--input", str(image_dir), "--output", str(out),
                                    "--opts", "MODEL.DEVICE", "cpu"])
    assert status == 1  # something failed
    assert "corrupt.jpg" in capsys.readouterr().err
    rows = {os.path.basename(r["file"]): r for r in csv.DictReader(open(out / "ponder_summary.csv"))}
    assert set(rows) == {"rgb.jpg", "gray.png", "alpha.png", "corrupt.jpg"}
    assert rows["corrupt.jpg"]["status"] == "error" and "cannot read image" in rows["corrupt.jpg"]["error"]
    for name, (height, width) in {"rgb": (150, 200), "gray": (97, 131), "alpha": (64, 300)}.items():
        assert Image.open(out / f"{name}_overlay.png").size == (width, height)
        for suffix in ("ponder", "blocks"):
            assert os.path.getsize(out / f"{name}_{suffix}.png") > 1000
        row = rows[f"{name}.{'jpg' if name == 'rgb' else 'png'}"]
        assert row["status"] == "ok" and (int(row["height"]), int(row["width"])) == (height, width)
    # The CSV holds the model's own per-image outputs.
    direct = predictor(read_image_rgb(str(image_dir / "gray.png"))[:, :, ::-1])["sact"]  # BGR
    assert float(rows["gray.png"]["ponder_cost"]) == pytest.approx(direct.ponder_cost)
    assert int(rows["gray.png"]["flops"]) == direct.flops
    assert float(rows["gray.png"]["units_res4"]) == pytest.approx(direct.units_per_block["res4"])


def test_glob_and_missing_inputs_are_reported(predictor, image_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(visualize_ponder, "SACTPredictor", lambda cfg: predictor)
    out = tmp_path / "out"
    status = visualize_ponder.main(["--config-file", os.path.join(REPO, "configs/synthetic/sact_tiny.yaml"),
                                    "--input", str(image_dir / "*.png"), str(tmp_path / "absent.jpg"),
                                    "--output", str(out), "--ponder-range", "0", "20"])
    rows = list(csv.DictReader(open(out / "ponder_summary.csv")))
    assert status == 1
    assert sorted(os.path.basename(r["file"]) for r in rows if r["status"] == "ok") == ["alpha.png", "gray.png"]
    assert [r["file"] for r in rows if r["status"] == "error"] == [str(tmp_path / "absent.jpg")]


def test_python_api_returns_maps_at_image_resolution(predictor, image_dir):
    vis = visualize(predictor, str(image_dir / "rgb.jpg"))
    assert vis.ponder_map.shape == (150, 200) and set(vis.block_maps) == {"res2", "res3", "res4"}
    assert all(m.shape == (150, 200) for m in vis.block_maps.values())
    # The total map is the sum of the block maps (nearest resizing keeps cells aligned).
    assert np.allclose(vis.ponder_map, sum(vis.block_maps.values()), atol=1e-5)
    plt.close("all")


def test_non_adaptive_model_has_no_ponder_maps():
    dense = SACTPredictor(tiny_cfg(config="synthetic/dense_tiny.yaml"))
    image = np.zeros((64, 80, 3), np.uint8)
    assert "instances" in dense(image)  # detections work
    with pytest.raises(ValueError, match="not adaptive"):
        visualize(dense, image)


def test_detections_can_be_labelled_with_their_head_units(monkeypatch):
    image = np.zeros((40, 60, 3), np.uint8)
    instances = Instances((40, 60), pred_boxes=Boxes(torch.tensor([[5.0, 5.0, 20.0, 20.0], [30, 5, 50, 30.0]])),
                          scores=torch.tensor([0.9, 0.8]), pred_classes=torch.tensor([0, 3]),
                          head_units=torch.tensor([1, 3]))
    report = SACTReport(image_size=(40, 60), flops=55, flops_per_block={}, dense_flops=100, units_per_block={})
    metadata = MetadataCatalog.get("synthetic_val")
    vis = PonderVisualization(image, instances, report, np.zeros((40, 60), np.float32), {}, metadata)
    drawn = []
    original = Visualizer.overlay_instances
    monkeypatch.setattr(Visualizer, "overlay_instances",
                        lambda self, **kw: drawn.append(kw.get("labels")) or original(self, **kw))
    plain = vis.detections()
    vis.label_units = True
    labelled = vis.detections()
    assert drawn[-1] == ["disc 90% | 1 units", "star 80% | 3 units"]
    assert plain.shape == labelled.shape and not np.array_equal(plain, labelled)


def test_large_image_gives_bounded_figures_and_memory(predictor, tmp_path):
    """A 3200x2400 image: figures at most 1600 pixels wide, small files, and the
    arrays allocated on the way bounded (they used to grow with the image: GBs)."""
    ramp = np.linspace(0, 255, 3200, dtype=np.float32)
    image = np.dstack([np.tile(ramp, (2400, 1)), np.tile(ramp[::-1], (2400, 1)),
                       np.full((2400, 3200), 90, np.float32)]).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    tracemalloc.start()
    try:
        records, failures = visualize_files(predictor, [str(tmp_path / "big.png")], str(tmp_path / "out"),
                                            progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not failures and (records[0]["height"], records[0]["width"]) == (2400, 3200)
    for suffix in ("ponder", "blocks", "overlay"):
        path = tmp_path / "out" / f"big_{suffix}.png"
        width, height = Image.open(path).size
        assert width <= 1600 and height <= 1600, (suffix, width, height)
        assert os.path.getsize(path) < 4e6, suffix
    assert peak < 200e6, f"{peak / 1e6:.0f} MB"
    plt.close("all")
