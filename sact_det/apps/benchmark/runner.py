"""Side-by-side latency of the SACT feature extractor (and detector) against
Detectron2's dense ResNet-C4, with the same weights, in one run.

Dense baselines, both timed in every comparison:

* **tuned**: the best dense version of the same network: batch norm folded,
  channels-last, fused convolution kernels, i.e. every plain optimisation
  SACT's executors use (:mod:`.tuned`);
* **stock**: Detectron2's own modules (FrozenBN as a separate op, NCHW), what
  Detectron2 runs by default.

SACT rows: ``dense`` (masked, as trained), ``perforated`` and ``tiled``.
Operating points (share of dense FLOPs) come from halting branches that respond
to the local mean activation (more computation where activations are strong)
and one test-time halting offset found by bisection on the benchmark image;
or from a trained model as is. With ``detector``, the whole Faster R-CNN is
timed the same way, the ACT box head's halting (if any) calibrated to a share
of the head's dense FLOPs, with where the time goes.

Each row is timed round-robin with the two baselines (so that drift of a
shared machine cancels in the ratios): median latency, speedup over each,
efficiency = speedup x FLOP ratio (1.0: every saved FLOP became saved time),
and the peak memory of the tensors allocated during inference.
"""
import copy
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from detectron2.modeling import build_model

from sact_det.apps.benchmark.models import (build_compared_models, detectron2_detector, raw_image, set_execution,
                                            with_tile_size)
from sact_det.apps.benchmark.points import (benchmark_image, calibrate, flops_pct, head_flops_pct, set_halting_profile,
                                            set_head_halting_profile)
from sact_det.apps.benchmark.tables import Row, format_row
from sact_det.apps.benchmark.timing import peak_memory_mb, time_breakdown, time_round_robin
from sact_det.apps.benchmark.tuned import TunedBackbone, tune_detector
from sact_det.modeling.sact.halting import set_test_halting_offset

__all__ = ["run_benchmark"]


def run_benchmark(cfg, sizes: Sequence[Tuple[int, int]], points: Sequence[Optional[float]],
                  executions: Sequence[str], tile_size: int, warmup: int, repeats: int,
                  dtype: torch.dtype = torch.float32, detector: bool = False,
                  head_points: Optional[Sequence[Optional[float]]] = None, calibration_steps: int = 14,
                  log: Callable[[str], None] = print) -> List[Row]:
    """All rows: per size, the two dense backbones, then SACT's at every point
    and execution; with ``detector``, the two dense detectors and SACT's
    (perforated, and tiled if asked) at every point, the box head calibrated to
    ``head_points`` (paired with ``points``; needs ``MODEL.SACT.HEAD_TYPE act``).
    ``points`` of None keep the halting of the loaded weights (a trained model).
    Latencies are measured first; peak memory afterwards, row by row."""
    if detector and dtype != torch.float32:
        # Detectron2's proposal and NMS code mixes the model's dtype with float32
        # boxes, and fails on a model cast to half precision.
        raise ValueError("the whole-detector comparison runs in float32 only: drop --detector "
                         "or --half/--bf16")
    head_points = list(head_points) if head_points else [None] * len(points)
    if len(head_points) != len(points):
        raise ValueError(f"--head-points pairs with --points: {len(head_points)} values for {len(points)} points")
    device = torch.device(cfg.MODEL.DEVICE)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model, stock = build_compared_models(cfg, device, dtype)
    if any(p is not None for p in head_points) and not model.roi_heads.adaptive:
        raise ValueError("--head-points needs an ACT box head (MODEL.SACT.HEAD_TYPE act)")
    tuned = TunedBackbone(stock)
    sact = model.backbone
    tiled_model = None
    if "tiled" in executions:
        tiled_model = build_model(with_tile_size(cfg, tile_size)).to(device=device, dtype=dtype).eval()
        tiled_model.load_state_dict(model.state_dict())
    if detector:
        d2_stock = detectron2_detector(cfg, model, device, dtype)
        d2_tuned = tune_detector(copy.deepcopy(d2_stock))
    rows, memory_jobs = [], []

    def add(row, fn, x, prepare=lambda: None):
        rows.append(row)
        memory_jobs.append((row, fn, x, prepare))
        log(format_row(row))

    for height, width in sizes:
        size = f"{height}x{width}"
        x = benchmark_image(cfg, height, width).to(device=device, dtype=dtype)
        stock_ms, tuned_ms = time_round_robin([stock, tuned], x, warmup, repeats)
        add(Row("backbone", "detectron2 (stock)", size, None, None, 100.0, stock_ms, tuned_ms / stock_ms, 1.0),
            stock, x)
        add(Row("backbone", "detectron2 (tuned)", size, None, None, 100.0, tuned_ms, 1.0, stock_ms / tuned_ms),
            tuned, x)
        raw = [{"image": raw_image(cfg, x)}]
        models = {e: (tiled_model if e == "tiled" else model) for e in executions}
        if any(p is not None for p in points):
            for m in set(models.values()):
                set_halting_profile(m.backbone, x)
        if detector:
            d2_ms = time_round_robin([lambda _: d2_stock(raw), lambda _: d2_tuned(raw)], x, 1, max(1, repeats // 2))
            d2_parts = {name: time_breakdown(m, raw, max(1, repeats // 2), sync)
                        for name, m in (("stock", d2_stock), ("tuned", d2_tuned))}
            add(Row("detector", "detectron2 R-C4 (stock)", size, None, None, 100.0, d2_ms[0], d2_ms[1] / d2_ms[0],
                    1.0, breakdown_ms=d2_parts["stock"]), lambda _: d2_stock(raw), x)
            add(Row("detector", "detectron2 R-C4 (tuned)", size, None, None, 100.0, d2_ms[1], 1.0,
                    d2_ms[0] / d2_ms[1], breakdown_ms=d2_parts["tuned"]), lambda _: d2_tuned(raw), x)
        for point, head_point in zip(points, head_points):
            for execution, m in models.items():
                set_execution(m, "perforated")  # the fastest; FLOPs do not depend on the execution
                if point is None:
                    offset, reached = None, flops_pct(m.backbone, x)
                else:
                    offset, reached = calibrate(m.backbone, lambda: flops_pct(m.backbone, x), point,
                                                calibration_steps)
                head_offset = None
                if head_point is not None:
                    # On the features of this operating point: the backbone's halting changes
                    # them, and a profile standardised on other features may not reach the target.
                    set_head_halting_profile(m, raw)
                    head_offset, head_reached = calibrate(m.roi_heads, lambda: head_flops_pct(m, raw), head_point,
                                                          calibration_steps)
                    log(f"  box head at {head_reached:.1f}% of its dense FLOPs (target {head_point:g}%)"
                        + ("  WARNING: target not reached" if abs(head_reached - head_point) > 5 else ""))
                set_execution(m, execution)

                def prepare(m=m, execution=execution, offset=offset, head_offset=head_offset):
                    set_execution(m, execution)
                    if offset is not None:
                        set_test_halting_offset(m.backbone, offset)
                    if head_offset is not None:
                        set_test_halting_offset(m.roi_heads, head_offset)

                def run(t, backbone=m.backbone):
                    return backbone.forward_with_sact(t, [(height, width)])

                stock_ms, tuned_ms, ms = time_round_robin([stock, tuned, run], x, warmup, repeats)
                add(Row("backbone", f"SACT {execution}", size, point, head_point, reached, ms, tuned_ms / ms,
                        stock_ms / ms), run, x, prepare)
                if detector and execution != "dense":
                    detect = (lambda _, m=m: m(raw))
                    with torch.no_grad():
                        report = m(raw)[0]["sact"]
                    d2_stock_ms, d2_tuned_ms, det_ms = time_round_robin(
                        [lambda _: d2_stock(raw), lambda _: d2_tuned(raw), detect], x, 1, max(1, repeats // 2))
                    add(Row("detector", f"SACT {execution}", size, point, head_point, report.detector_flops_pct,
                            det_ms, d2_tuned_ms / det_ms, d2_stock_ms / det_ms,
                            breakdown_ms=time_breakdown(m, raw, max(1, repeats // 2), sync)), detect, x, prepare)
    for row, fn, x, prepare in memory_jobs:
        prepare()
        row.peak_mem_mb = peak_memory_mb(fn, x)
    return rows
