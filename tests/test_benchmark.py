"""The benchmark tool's machinery (not its timings): operating points, rows, memory."""
import math

import pytest
import torch

from sact_det.benchmark import (_build, benchmark_image, calibrate, flops_pct, peak_memory_mb, profile_point,
                                run_benchmark, set_halting_profile)

from conftest import tiny_cfg


def test_calibration_reaches_the_operating_point():
    cfg = tiny_cfg()
    _, backbone, _ = _build(cfg, torch.device("cpu"), torch.float32)
    x = benchmark_image(cfg, 96, 128)
    set_halting_profile(backbone, x)
    backbone.execution = "perforated"
    for target in (80.0, 45.0):
        offset, reached = calibrate(backbone, x, target)
        assert abs(reached - target) < 3.0
        assert math.isclose(flops_pct(backbone, x), reached)  # the offset stays applied
    # Spatially varying halting: the active sets are neither empty nor everything.
    _, outputs = backbone.forward_with_sact(x, [(96, 128)])
    units = torch.cat([o.num_units_map.flatten().float() for o in outputs.values()])
    assert units.min() < units.max()


def test_rows_for_every_execution_point_and_the_detector():
    rows = run_benchmark(tiny_cfg(), [(96, 128)], [100.0, 50.0], ["dense", "perforated", "tiled"], tile_size=4,
                         warmup=0, repeats=1, detector=True, log=lambda line: None)
    models = [r.model for r in rows]
    assert models[0] == "detectron2 ResNet (dense)" and models.count("detector: detectron2 R-C4") == 1
    for execution in ("dense", "perforated", "tiled"):
        assert models.count(f"SACT {execution}") == 2
    assert models.count("detector: SACT perforated") == 2
    for row in rows:
        assert row.median_ms > 0 and row.speedup > 0 and row.peak_mem_mb > 0
        if row.target_pct is not None:
            assert abs(row.flops_pct - row.target_pct) < 5.0
            assert math.isclose(row.flop_ratio, row.flops_pct / 100)


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
