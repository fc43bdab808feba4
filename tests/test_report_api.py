"""outputs["sact"] as a documented, Mapping-readable report, its scale, and
its maps on the original image (issue 24, item 7)."""
import json
import os
import re
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_cfg

from sact_det.engine.predictor import SACTPredictor
from sact_det.modeling.report import DERIVED_KEYS, SACTReport


@pytest.fixture(scope="module")
def outputs():
    torch.manual_seed(0)
    predictor = SACTPredictor(tiny_cfg("INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"))
    image = np.random.RandomState(0).randint(0, 255, (90, 140, 3)).astype(np.uint8)
    return predictor(image)


def test_the_report_reads_as_a_mapping(outputs):
    report = outputs["sact"]
    assert isinstance(report, Mapping)
    assert report["flops"] == report.flops and report["flops_pct"] == pytest.approx(report.flops_pct)
    assert report["ponder_cost_per_block"] == report.ponder_cost_per_block
    assert set(report.keys()) == set(dict(report)) and len(report) == len(list(report))
    assert {"image_size", "ponder_maps", "detector_flops_pct"} <= set(report)
    assert "flops" in report and "flop" not in report and report.get("flop") is None
    with pytest.raises(KeyError, match="SACTReport has no field 'FLOPs'; its fields: image_size, flops"):
        report["FLOPs"]
    json.dumps(report.record())  # the scalars, JSON-ready
    assert set(report.record()) <= set(report)


def test_maps_are_at_the_network_input_scale_and_go_onto_the_original_image(outputs):
    report, instances = outputs["sact"], outputs["instances"]
    assert instances.image_size == (90, 140)  # detections: the original image
    assert report.image_size == (62, 96)  # the network input: resized, longer side capped at 96
    assert report.ponder_map.shape == tuple(-(-n // report.ponder_map_stride) for n in report.image_size)
    on_image = report.ponder_map_on_image(instances.image_size)
    assert on_image.shape == (90, 140) and on_image.dtype == np.float32
    cells = report.ponder_map.numpy()
    assert set(np.unique(on_image)) <= set(np.unique(cells))  # each cell keeps its value
    assert on_image[0, 0] == cells[0, 0] and on_image[-1, -1] == cells[-1, -1]
    res4 = report.ponder_map_on_image((90, 140), "res4")
    assert res4.shape == (90, 140) and res4[0, 0] == report.ponder_maps["res4"][0, 0]
    with pytest.raises(KeyError, match="no ponder map of block 'res5'"):
        report.ponder_map_on_image((90, 140), "res5")


def test_every_field_is_in_the_readme_table():
    readme = open(os.path.join(REPO, "README.md")).read()
    table = readme[readme.index("| key | value |"):]
    table = table[: table.index("\n\n")]
    documented = set(re.findall(r"`(\w+)`", "\n".join(line.split("|")[1] for line in table.splitlines())))
    assert documented == set(SACTReport._keys())
    assert set(DERIVED_KEYS) <= documented
    assert "network input's" in readme and "ponder_map_on_image" in readme
