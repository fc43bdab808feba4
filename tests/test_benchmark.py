"""The benchmark tool's machinery (not its timings): operating points, rows, memory."""
import math

import pytest
import torch
from conftest import tiny_cfg

from sact_det.apps.benchmark.models import build_compared_models
from sact_det.apps.benchmark.points import benchmark_image, calibrate, flops_pct, set_halting_profile
from sact_det.apps.benchmark.profile import profile_point
from sact_det.apps.benchmark.runner import run_benchmark
from sact_det.apps.benchmark.timing import peak_memory_mb
from sact_det.apps.benchmark.tuned import TunedBackbone, tune_detector


def test_calibration_reaches_the_operating_point():
    cfg = tiny_cfg()
    model, _ = build_compared_models(cfg, torch.device("cpu"), torch.float32)
    backbone = model.backbone
    x = benchmark_image(cfg, 96, 128)
    set_halting_profile(backbone, x)
    backbone.execution = "perforated"
    for target in (80.0, 45.0):
        offset, reached = calibrate(backbone, lambda: flops_pct(backbone, x), target)
        assert abs(reached - target) < 3.0
        assert math.isclose(flops_pct(backbone, x), reached)  # the offset stays applied
    # Spatially varying halting: the active sets are neither empty nor everything.
    _, outputs = backbone.forward_with_sact(x, [(96, 128)])
    units = torch.cat([o.num_units_map.flatten().float() for o in outputs.values()])
    assert units.min() < units.max()


def test_rows_for_every_execution_point_and_the_detector():
    cfg = tiny_cfg("MODEL.SACT.RES5_NUM_UNITS", "3", "MODEL.SACT.HEAD_TYPE", "act")
    lines = []
    rows = run_benchmark(cfg, [(96, 128)], [100.0, 50.0], ["dense", "perforated", "tiled"], tile_size=4,
                         warmup=0, repeats=1, detector=True, head_points=[100.0, 50.0], calibration_steps=7,
                         log=lines.append)
    backbones = [r.model for r in rows if r.kind == "backbone"]
    detectors = [r for r in rows if r.kind == "detector"]
    assert backbones[:2] == ["detectron2 (stock)", "detectron2 (tuned)"]
    for execution in ("dense", "perforated", "tiled"):
        assert backbones.count(f"SACT {execution}") == 2
    assert [r.model for r in detectors[:2]] == ["detectron2 R-C4 (stock)", "detectron2 R-C4 (tuned)"]
    assert [r.model for r in detectors[2:]] == ["SACT perforated", "SACT tiled"] * 2
    for row in rows:
        assert row.median_ms > 0 and row.speedup_tuned > 0 and row.speedup_stock > 0 and row.peak_mem_mb > 0
        if row.kind == "backbone" and row.target_pct is not None:
            assert abs(row.flops_pct - row.target_pct) < 8.0  # 7 bisection steps
    for row in detectors:
        assert set(row.breakdown_ms) == {"backbone", "RPN", "ROI pooling", "box head", "post-processing"}
        assert all(v >= 0 for v in row.breakdown_ms.values()) and row.breakdown_ms["box head"] > 0
    # The head reaches its target at every point (its halting profile follows the backbone's features).
    head = [float(line.split("box head at ")[1].split("%")[0]) for line in lines if "box head at" in line]
    targets = [100.0] * 3 + [50.0] * 3  # dense, perforated, tiled at each point
    assert len(head) == len(targets) and max(abs(h - t) for h, t in zip(head, targets)) < 8.0, head
    full, half = detectors[2], detectors[4]  # perforated at (100, 100) and (50, 50)
    assert half.flops_pct < full.flops_pct  # the whole detector's FLOPs follow both operating points


def test_tuned_dense_networks_equal_detectron2s():
    cfg = tiny_cfg("MODEL.SACT.TYPE", "none", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    from sact_det.apps.benchmark.models import detectron2_detector

    model, stock = build_compared_models(cfg, torch.device("cpu"), torch.float32)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        reference = stock(x)["res4"]
        difference = (TunedBackbone(stock)(x)["res4"] - reference).abs().max() / reference.abs().max()
        assert difference < 1e-5
        d2 = detectron2_detector(cfg, model, torch.device("cpu"), torch.float32)
        inputs = [{"image": torch.rand(3, 96, 128) * 255}]
        expected = d2(inputs)[0]["instances"]
        tuned = tune_detector(d2)(inputs)[0]["instances"]
    assert len(expected) == len(tuned) > 0
    assert torch.allclose(expected.scores, tuned.scores, atol=1e-4)


def test_peak_memory_counts_what_a_function_allocates():
    x = torch.zeros(1)
    small = peak_memory_mb(lambda t: torch.ones(256, 1024), x)  # 1 MiB
    large = peak_memory_mb(lambda t: [torch.ones(256, 1024) for _ in range(4)], x)  # 4 MiB held together
    assert 0.9 < small < 1.5 and 3.9 < large < 4.5


def test_profile_names_every_block():
    text = profile_point(tiny_cfg(), 96, 128, 50.0, repeats=1)
    for name in ("res2", "res3", "res4", "stem", "aten::"):
        assert name in text


def test_detector_in_half_precision_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="float32 only"):
        run_benchmark(tiny_cfg(), [(96, 128)], [50.0], ["perforated"], tile_size=4, warmup=0, repeats=1,
                      dtype=torch.bfloat16, detector=True, log=lambda line: None)


def test_crossover_times_every_block_and_share():
    from sact_det.apps.benchmark.crossover import unit_crossover
    from sact_det.apps.benchmark.tables import crossover_table

    records, crossover = unit_crossover(tiny_cfg(), 96, 128, [0.2, 1.0], tile_size=4, repeats=1)
    assert [(r["block"], r["share"]) for r in records] == [(b, s) for b in ("res2", "res3", "res4")
                                                           for s in (0.2, 1.0)]
    for record in records:
        assert all(record[f"{way} ms"] > 0 for way in ("dense", "perforated", "tiled"))
    assert set(crossover) == {"res2", "res3", "res4"} and all(0.0 <= c <= 1.0 for c in crossover.values())
    assert "crossover" in crossover_table(records, crossover)
