"""Side-by-side latency of the SACT feature extractor (and detector) against
Detectron2's dense ResNet-C4, with the same weights, in one run.

Dense baselines, both timed in every comparison:

* **tuned**: the best dense version of the same network: batch norm folded,
  channels-last, fused convolution kernels, i.e. every plain optimisation
  SACT's executors use (:mod:`sact_det.sparse.dense`);
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
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .data.synthetic import render_image
from .halting import set_test_halting_offset
from .report import build_reports
from .sparse.dense import TunedBackbone, tune_detector

__all__ = ["Row", "benchmark_image", "set_halting_profile", "set_head_halting_profile", "calibrate",
           "time_round_robin", "peak_memory_mb", "run_benchmark", "markdown_table", "machine_description",
           "rows_as_dicts", "profile_point", "unit_crossover",
           "crossover_table"]


@dataclass
class Row:
    kind: str  # "backbone" (the feature extractor) or "detector"
    model: str
    size: str
    target_pct: Optional[float]  # feature-extractor FLOPs target
    head_target_pct: Optional[float]  # box-head FLOPs target (ACT head)
    flops_pct: float  # of the feature extractor (backbone rows) or of the whole detector
    median_ms: float
    speedup_tuned: float
    speedup_stock: float
    peak_mem_mb: float = float("nan")
    breakdown_ms: Dict[str, float] = field(default_factory=dict)  # detector rows: where the time goes

    @property
    def efficiency_tuned(self) -> float:
        return self.speedup_tuned * self.flops_pct / 100

    @property
    def efficiency_stock(self) -> float:
        return self.speedup_stock * self.flops_pct / 100


def benchmark_image(cfg, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A normalised ``[1, 3, H, W]`` synthetic image (objects on a background)."""
    image, _, _ = render_image(np.random.RandomState(seed), height, width, max_objects=5)
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy()).float()  # BGR, as Detectron2 reads
    if cfg.INPUT.FORMAT == "RGB":
        tensor = tensor.flip(0)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    return ((tensor - mean) / std)[None]


# --- operating points ---------------------------------------------------------------------
@torch.no_grad()
def set_halting_profile(backbone, x: torch.Tensor, sharpness: float = 2.0) -> None:
    """Halting branches that depend on the 3x3 local mean activation, standardised
    with each block's output statistics on this image: ``logit = b0 - sharpness * z``
    (more computation where activations are strong). This gives spatially
    coherent active regions, as trained models have, on random weights; the
    operating point is then set by :func:`calibrate`."""
    set_test_halting_offset(backbone, 0.0)
    features = backbone.stem(x)
    for stage in backbone.stages:
        features = stage(features).features  # dense, with the current halting
        if not stage.adaptive:
            continue
        local = F.avg_pool2d(features.mean(dim=1, keepdim=True), 3, 1, 1, count_include_pad=False)
        mu, sigma = float(local.mean()), float(local.std()) + 1e-6
        for branch in stage.halting:
            channels = branch.global_logit.in_features
            branch.global_logit.weight.zero_()
            if branch.spatial_logit is not None:
                branch.spatial_logit.weight.fill_(-sharpness / (sigma * 9 * channels))
            else:  # ACT: the image's mean activation
                branch.global_logit.weight.fill_(-sharpness / (sigma * channels))
            branch.bias.fill_(sharpness * mu / sigma)


@torch.no_grad()
def set_head_halting_profile(model, inputs, sharpness: float = 2.0) -> None:
    """The ACT box head's halting on random weights: each proposal's score
    depends on its mean activation after the unit, standardised over the
    proposals of ``inputs`` (``logit = b0 - sharpness * z``)."""
    head = model.roi_heads.res5
    pooled = []
    hooks = [branch.register_forward_pre_hook(lambda m, args: pooled.append(args[0].mean((1, 2, 3))))
             for branch in head.halting]
    set_test_halting_offset(head, -40.0)  # every unit on every proposal while recording
    execution, model.roi_heads.execution = model.roi_heads.execution, "dense"
    try:
        model(inputs)
    finally:
        model.roi_heads.execution = execution
        for hook in hooks:
            hook.remove()
    for branch, means in zip(head.halting, pooled):
        mu, sigma = float(means.mean()), float(means.std()) + 1e-6
        branch.global_logit.weight.fill_(-sharpness / (sigma * branch.global_logit.in_features))
        branch.bias.fill_(sharpness * mu / sigma)
    set_test_halting_offset(head, 0.0)


@torch.no_grad()
def flops_pct(backbone, x: torch.Tensor) -> float:
    size = tuple(x.shape[-2:])
    _, outputs = backbone.forward_with_sact(x, [size])
    return build_reports(backbone, outputs, [size])[0].flops_pct


@torch.no_grad()
def head_flops_pct(model, inputs) -> float:
    report = model(inputs)[0]["sact"]
    return 100.0 * report.box_head_flops / report.box_head_dense_flops


def calibrate(module, measure: Callable[[], float], target_pct: float, steps: int = 14) -> Tuple[float, float]:
    """The test-time halting offset of ``module``'s branches (higher: earlier
    halting) whose ``measure()`` (FLOPs %) is closest to ``target_pct``, by
    bisection; returns (offset, reached percentage) and leaves it applied."""
    low, high = -30.0, 30.0
    best = (float("inf"), 0.0, float("nan"))
    for _ in range(steps):
        mid = (low + high) / 2
        set_test_halting_offset(module, mid)
        pct = measure()
        if abs(pct - target_pct) < best[0]:
            best = (abs(pct - target_pct), mid, pct)
        low, high = (mid, high) if pct > target_pct else (low, mid)
    set_test_halting_offset(module, best[1])
    return best[1], best[2]


# --- timing ---------------------------------------------------------------------------------
def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
    except OSError:
        pass
    return f"CPU, {torch.get_num_threads()} threads"


@torch.no_grad()
def time_round_robin(fns: Sequence[Callable], x: torch.Tensor, warmup: int, repeats: int) -> List[float]:
    """Median wall-clock latencies (ms) of each ``fn(x)``, timed in turn within
    every repeat so that all see the same machine state (synchronised on
    CUDA): their ratios are robust to the drift of shared machines."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn(x)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            sync()
            start = time.perf_counter()
            fn(x)
            sync()
            record.append(time.perf_counter() - start)
    return [1000 * float(np.median(t)) for t in times]


@torch.no_grad()
def peak_memory_mb(fn: Callable, x: torch.Tensor) -> float:
    """Peak memory of the tensors ``fn(x)`` allocates (beyond those allocated
    before it: model, input), in MiB. CUDA: the caching allocator's peak. CPU:
    the running sum of the allocations and frees recorded by PyTorch's profiler
    (independent of how the C allocator returns memory to the system; excludes
    oneDNN/MKL internal scratch buffers on both sides of the comparison)."""
    fn(x)  # warm: executors and caches are built outside the measurement
    if x.is_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2 ** 20


@contextmanager
def _timed_parts(model, parts: Dict[str, float], sync):
    """Accumulates into ``parts`` the time spent in the detector's backbone,
    RPN, ROI pooling and res5 box head (by wrapping those callables)."""
    backbone = model.backbone
    targets = [("backbone", backbone, "forward_with_sact" if hasattr(backbone, "forward_with_sact") else "forward"),
               ("RPN", model.proposal_generator, "forward"), ("ROI pooling", model.roi_heads.pooler, "forward"),
               ("box head", model.roi_heads, "run_res5" if hasattr(model.roi_heads, "run_res5") else None),
               ("box head", model.roi_heads.res5, None if hasattr(model.roi_heads, "run_res5") else "forward")]
    patched = []
    for name, owner, attribute in targets:
        if attribute is None:
            continue
        original = getattr(owner, attribute)

        def timed(*args, _original=original, _name=name, **kwargs):
            sync()
            start = time.perf_counter()
            result = _original(*args, **kwargs)
            sync()
            parts[_name] = parts.get(_name, 0.0) + 1000 * (time.perf_counter() - start)
            return result

        setattr(owner, attribute, timed)
        patched.append((owner, attribute))
    try:
        yield
    finally:
        for owner, attribute in patched:
            delattr(owner, attribute)  # back to the class's method


@torch.no_grad()
def time_breakdown(model, inputs, repeats: int, sync) -> Dict[str, float]:
    """Median ms per part of one detector inference; "post-processing" is the
    rest (box predictor, NMS, rescaling)."""
    totals, parts_per_run = [], []
    for _ in range(repeats):
        parts: Dict[str, float] = {}
        with _timed_parts(model, parts, sync):
            sync()
            start = time.perf_counter()
            model(inputs)
            sync()
            totals.append(1000 * (time.perf_counter() - start))
        parts_per_run.append(parts)
    result = {name: float(np.median([p.get(name, 0.0) for p in parts_per_run]))
              for name in ("backbone", "RPN", "ROI pooling", "box head")}
    result["post-processing"] = max(0.0, float(np.median(totals)) - sum(result.values()))
    return result


# --- building the compared models ---------------------------------------------------------
def _build(cfg, device, dtype):
    """(SACT detector, Detectron2's backbone with the same weights)."""
    from .checkpoint import SACTCheckpointer

    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        SACTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        # Random box regression makes degenerate proposals that never reach the box
        # head; with it zeroed the proposals are anchors and POST_NMS_TOPK_TEST of
        # them are classified, as with a trained model.
        with torch.no_grad():
            deltas = model.proposal_generator.rpn_head.anchor_deltas
            deltas.weight.zero_()
            deltas.bias.zero_()
    model.to(device=device, dtype=dtype).eval()
    reference = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    result = reference.load_state_dict(model.backbone.state_dict(), strict=False)
    assert not result.missing_keys, result.missing_keys  # the same unit weights
    return model, reference.to(device=device, dtype=dtype).eval()


def _detectron2_detector(cfg, sact_model, device, dtype):
    """Detectron2's own Faster R-CNN R-C4 with the SACT detector's weights."""
    d2 = cfg.clone()
    d2.defrost()
    d2.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    d2.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    d2.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    model = build_model(d2)
    model.load_state_dict(sact_model.state_dict(), strict=False)
    return model.to(device=device, dtype=dtype).eval()


def _raw_image(cfg, x):
    """The un-normalised image a detector takes, from a benchmark input."""
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=x.device).view(3, 1, 1)
    return (x[0].float() * std + mean).to(x.dtype)


def _with_tile_size(cfg, tile_size):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.SACT.TILE_SIZE = tile_size
    cfg.MODEL.SACT.EXECUTION = "tiled"
    return cfg


def _set_execution(model, execution: str) -> None:
    model.backbone.execution = execution
    model.roi_heads.execution = execution


# --- the benchmark --------------------------------------------------------------------------
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
    model, stock = _build(cfg, device, dtype)
    if any(p is not None for p in head_points) and not model.roi_heads.adaptive:
        raise ValueError("--head-points needs an ACT box head (MODEL.SACT.HEAD_TYPE act)")
    tuned = TunedBackbone(stock)
    sact = model.backbone
    tiled_model = None
    if "tiled" in executions:
        tiled_model = build_model(_with_tile_size(cfg, tile_size)).to(device=device, dtype=dtype).eval()
        tiled_model.load_state_dict(model.state_dict())
    if detector:
        d2_stock = _detectron2_detector(cfg, model, device, dtype)
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
        raw = [{"image": _raw_image(cfg, x)}]
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
                _set_execution(m, "perforated")  # the fastest; FLOPs do not depend on the execution
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
                _set_execution(m, execution)

                def prepare(m=m, execution=execution, offset=offset, head_offset=head_offset):
                    _set_execution(m, execution)
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


@torch.no_grad()
def profile_point(cfg, height: int, width: int, target_pct: float, execution: str = "perforated",
                  repeats: int = 3) -> str:
    """Where the time goes at one operating point: each block's active share per
    unit, per-block latency (min of ``repeats``) beside the tuned dense network's
    blocks, and PyTorch's profiler table of the SACT feature extractor (with
    the executor's own scopes: ``sact::unit``, ``sact::halting``,
    ``sact::accumulate``, ``sact::bookkeeping``)."""
    device = torch.device(cfg.MODEL.DEVICE)
    model, stock = _build(cfg, device, torch.float32)
    sact, tuned = model.backbone, TunedBackbone(stock)
    x = benchmark_image(cfg, height, width).to(device)
    set_halting_profile(sact, x)
    sact.execution = "perforated"
    _, reached = calibrate(sact, lambda: flops_pct(sact, x), target_pct)
    sact.execution = execution
    lines = [f"{height}x{width}, SACT {execution} at {reached:.1f}% of dense FLOPs"]
    _, outputs = sact.forward_with_sact(x, [(height, width)])
    for name, out in outputs.items():
        shares = " ".join(f"{float(m.float().mean()):.2f}" for m in out.computed_masks)
        lines.append(f"  {name}: mean units {float(out.num_units_map.float().mean()):.2f}; "
                     f"active share of units 2, 3, ...: {shares}")
    executor = sact._sparse_executor() if execution != "dense" else None
    sact_blocks = [("stem", executor.stem if executor else sact.stem)] + [
        (name, lambda h, i=index, stage=stage: (executor.stages[i] if executor else stage)(h, None).features)
        for index, (name, stage) in enumerate(zip(sact.stage_names, sact.stages))]

    tuned_blocks = [("stem", tuned.run_stem)] + [
        (name, lambda h, units=units: tuned.run_units(units, h)) for name, units in zip(tuned.names, tuned.blocks)]
    chains = (("SACT", sact_blocks), ("tuned dense", tuned_blocks))
    times = {label: {} for label, _ in chains}
    for _ in range(repeats):  # the two chains in turn: both see the same machine state
        for label, blocks in chains:
            h = x
            for name, block in blocks:
                start = time.perf_counter()
                h = block(h)
                if h.is_cuda:
                    torch.cuda.synchronize()
                times[label].setdefault(name, []).append(1000 * (time.perf_counter() - start))
    for label, _ in chains:
        lines.append(f"  {label} block latency (ms, min of {repeats}): " +
                     ", ".join(f"{name} {min(t):.1f}" for name, t in times[label].items()))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        sact.forward_with_sact(x, [(height, width)])
    averages = prof.key_averages()
    scopes = [e for e in averages if e.key.startswith("sact::")]
    if scopes:
        lines.append("  executor scopes (CPU ms): " + ", ".join(
            f"{e.key} {e.cpu_time_total / 1000:.1f}" for e in sorted(scopes, key=lambda e: -e.cpu_time_total)))
    lines.append(averages.table(sort_by="self_cpu_time_total", row_limit=14))
    return "\n".join(lines)


@torch.no_grad()
def unit_crossover(cfg, height: int, width: int, shares: Sequence[float], tile_size: int = 8,
                   repeats: int = 5) -> Tuple[List[dict], Dict[str, float]]:
    """The cost model behind ``MODEL.SACT.SPARSE_MAX_ACTIVE``, measured on this
    machine: for the second unit of every block (its real input on the
    benchmark image), the latency of running it densely (what the executors
    do above ``SPARSE_MAX_ACTIVE``), perforated and tiled, at each active
    share in ``shares``. Active positions are the share with the strongest
    3x3 local mean activation (coherent regions, as halting makes them).

    Returns (one dict per block and share, and per block the crossover: the
    share below which perforated beats dense, interpolated; 0 if it never does)."""
    from .sparse.rows import BlockRows, MapLayout
    from .sparse.units import dense_unit, perforated_unit, tiled_unit

    device = torch.device(cfg.MODEL.DEVICE)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shares = sorted(shares)
    _, stock = _build(cfg, device, torch.float32)
    tuned = TunedBackbone(stock)
    h = tuned.run_stem(benchmark_image(cfg, height, width).to(device))
    records, crossover = [], {}
    for name, units in zip(tuned.names, tuned.blocks):
        h = units[0].dense(h)  # the second unit's input
        unit, (_, channels, rows_h, rows_w) = units[1], h.shape
        layout = MapLayout(1, rows_h, rows_w, None, device)
        tiles = layout.tiles(tile_size)
        data = h.permute(0, 2, 3, 1).reshape(layout.num, channels)
        local = F.avg_pool2d(h.mean(1, keepdim=True), 3, 1, 1, count_include_pad=False).flatten()
        order = torch.argsort(local, descending=True)
        for share in shares:
            active = order[:max(1, round(share * layout.num))].sort().values
            dilated, neighbour_rows = layout.dilate(active)
            windows = tiles[0][torch.unique(tiles[1][active])]
            ways = {"dense": lambda r: dense_unit(unit, r, active),
                    "perforated": lambda r: perforated_unit(unit, r, active, dilated, neighbour_rows),
                    "tiled": lambda r: tiled_unit(unit, r, active, windows, tile_size)}
            times = {way: [] for way in ways}
            for repeat in range(repeats + 1):  # the first round warms up
                for way, fn in ways.items():
                    rows = BlockRows(layout, data.clone(), spatial=False)  # units write in place
                    sync()
                    start = time.perf_counter()
                    fn(rows)
                    sync()
                    if repeat:
                        times[way].append(1000 * (time.perf_counter() - start))
            record = {"block": name, "share": share, **{f"{way} ms": float(np.median(t)) for way, t in times.items()}}
            records.append(record)
        ratios = [(r["share"], r["perforated ms"] / r["dense ms"]) for r in records if r["block"] == name]
        crossover[name] = 0.0
        for (low, r_low), (high, r_high) in zip(ratios, ratios[1:]):
            if r_low < 1.0 <= r_high:  # the last crossing from faster to slower
                crossover[name] = low + (1.0 - r_low) * (high - low) / (r_high - r_low)
        if ratios and ratios[-1][1] < 1.0:
            crossover[name] = ratios[-1][0]
        h = tuned.run_units(units[1:], h)
    return records, crossover


# --- reporting ------------------------------------------------------------------------------
def format_row(row: Row) -> str:
    target = "" if row.target_pct is None else f"(target {row.target_pct:.0f}%)"
    return (f"{row.size:>9} {row.kind:<8} {row.model:<24} FLOPs {row.flops_pct:5.1f}% {target:<13} "
            f"{row.median_ms:9.1f} ms  vs tuned {row.speedup_tuned:5.2f}x (eff. {row.efficiency_tuned:4.2f})  "
            f"vs stock {row.speedup_stock:5.2f}x")


def crossover_table(records: Sequence[dict], crossover: Dict[str, float]) -> str:
    """Markdown: per block and active share, each way's latency and perforated /
    dense; then each block's crossover share."""
    lines = ["| block | active share | dense ms | perforated ms | tiled ms | perforated / dense |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['block']} | {r['share']:.2f} | {r['dense ms']:.2f} | {r['perforated ms']:.2f} | "
                     f"{r['tiled ms']:.2f} | {r['perforated ms'] / r['dense ms']:.2f} |")
    lines.append("")
    lines.append("crossover (perforated faster than dense below this share): " +
                 ", ".join(f"{name} {share:.2f}" for name, share in crossover.items()))
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| size | | model | FLOPs target % | head target % | FLOPs % | median ms | speedup vs tuned | "
             "efficiency vs tuned | speedup vs stock | efficiency vs stock | peak MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        target = "" if r.target_pct is None else f"{r.target_pct:.0f}"
        head = "" if r.head_target_pct is None else f"{r.head_target_pct:.0f}"
        lines.append(f"| {r.size} | {r.kind} | {r.model} | {target} | {head} | {r.flops_pct:.1f} | {r.median_ms:.1f} | "
                     f"{r.speedup_tuned:.2f} | {r.efficiency_tuned:.2f} | {r.speedup_stock:.2f} | "
                     f"{r.efficiency_stock:.2f} | {r.peak_mem_mb:.1f} |")
    breakdowns = [r for r in rows if r.breakdown_ms]
    if breakdowns:
        parts = list(breakdowns[0].breakdown_ms)
        lines += ["", "| size | detector | FLOPs target % | head target % | " + " | ".join(f"{p} ms" for p in parts) + " |",
                  "|---|---|---:|---:|" + "---:|" * len(parts)]
        for r in breakdowns:
            target = "" if r.target_pct is None else f"{r.target_pct:.0f}"
            head = "" if r.head_target_pct is None else f"{r.head_target_pct:.0f}"
            lines.append(f"| {r.size} | {r.model} | {target} | {head} | "
                         + " | ".join(f"{r.breakdown_ms[p]:.0f}" for p in parts) + " |")
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[Row]) -> List[dict]:
    return [dict(asdict(r), efficiency_tuned=r.efficiency_tuned, efficiency_stock=r.efficiency_stock) for r in rows]
