"""Side-by-side latency of the SACT feature extractor (and detector) against
Detectron2's dense ResNet-C4, with the same weights, in one run.

Compared: Detectron2's own ``ResNet`` backbone (what a user would pick
instead: FrozenBN, NCHW), SACT ``dense`` (masked, as trained), ``perforated``
and ``tiled`` execution. Operating points (share of dense FLOPs) are set by
shifting the halting biases of a network whose halting branches respond to the
local mean activation (more computation where activations are strong), found
by bisection on the benchmark image; or taken from a trained model as is.

Reported per row: median latency, speedup over Detectron2's backbone (timed
alternately with each row, so that drift of the machine cancels), FLOP ratio,
efficiency = speedup x FLOP ratio (1.0: every saved FLOP became saved time) and
the peak memory of the tensors allocated during inference.
"""
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .data.synthetic import render_image
from .report import build_reports

__all__ = ["Row", "benchmark_image", "set_halting_profile", "calibrate", "paired_time_ms", "peak_memory_mb",
           "run_benchmark", "markdown_table", "machine_description", "rows_as_dicts", "profile_point"]


@dataclass
class Row:
    model: str
    size: str
    target_pct: Optional[float]
    flops_pct: float
    median_ms: float
    speedup: float
    flop_ratio: float
    efficiency: float
    peak_mem_mb: float


def benchmark_image(cfg, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A normalised ``[1, 3, H, W]`` synthetic image (objects on clutter)."""
    image, _, _ = render_image(np.random.RandomState(seed), height, width, max_objects=5)
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy()).float()  # BGR, as Detectron2 reads
    if cfg.INPUT.FORMAT == "RGB":
        tensor = tensor.flip(0)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    return ((tensor - mean) / std)[None]


@torch.no_grad()
def set_halting_profile(backbone, x: torch.Tensor, sharpness: float = 2.0) -> None:
    """Halting branches that depend on the 3x3 local mean activation, standardised
    with each block's output statistics on this image: ``logit = b0 - sharpness * z``
    (more computation where activations are strong). This gives spatially
    coherent active regions, as trained models have, on random weights; the
    biases are then shifted by :func:`calibrate`."""
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
            branch.profile_bias = branch.bias.detach().clone()


@torch.no_grad()
def _shift_bias(backbone, offset: float):
    for stage in backbone.stages:
        for branch in stage.halting or []:
            branch.bias.copy_(branch.profile_bias + offset)


@torch.no_grad()
def flops_pct(backbone, x: torch.Tensor) -> float:
    size = tuple(x.shape[-2:])
    _, outputs = backbone.forward_with_sact(x, [size])
    return build_reports(backbone, outputs, [size])[0].flops_pct


def calibrate(backbone, x: torch.Tensor, target_pct: float, steps: int = 14) -> Tuple[float, float]:
    """Bias offset (added to every halting bias; higher = earlier halting) whose
    FLOPs are closest to ``target_pct`` % of dense, by bisection; returns
    (offset, reached percentage) and leaves the offset applied."""
    low, high = -30.0, 30.0
    best = (float("inf"), 0.0, float("nan"))
    for _ in range(steps):
        mid = (low + high) / 2
        _shift_bias(backbone, mid)
        pct = flops_pct(backbone, x)
        if abs(pct - target_pct) < best[0]:
            best = (abs(pct - target_pct), mid, pct)
        low, high = (mid, high) if pct > target_pct else (low, mid)
    _shift_bias(backbone, best[1])
    return best[1], best[2]


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
def paired_time_ms(baseline: Callable, candidate: Callable, x: torch.Tensor, warmup: int,
                   repeats: int) -> Tuple[float, float]:
    """Median wall-clock latencies (ms) of ``baseline(x)`` and ``candidate(x)``,
    timed alternately so that both see the same machine state (synchronised on
    CUDA). Their ratio is robust to the drift of shared machines."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        baseline(x)
        candidate(x)
    times = ([], [])
    for _ in range(repeats):
        for fn, record in zip((baseline, candidate), times):
            sync()
            start = time.perf_counter()
            fn(x)
            sync()
            record.append(time.perf_counter() - start)
    return tuple(1000 * float(np.median(t)) for t in times)


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


def _build(cfg, device, dtype):
    """(SACT detector or None, SACT backbone, Detectron2 backbone with the same weights)."""
    from detectron2.modeling import build_model

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
    return model, model.backbone, reference.to(device=device, dtype=dtype).eval()


def _detectron2_detector(cfg, sact_model, device, dtype):
    """Detectron2's own Faster R-CNN R-C4 with the SACT detector's weights."""
    from detectron2.modeling import build_model

    d2 = cfg.clone()
    d2.defrost()
    d2.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    d2.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    d2.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    model = build_model(d2)
    model.load_state_dict(sact_model.state_dict(), strict=False)
    return model.to(device=device, dtype=dtype).eval()


def run_benchmark(cfg, sizes: Sequence[Tuple[int, int]], points: Sequence[Optional[float]],
                  executions: Sequence[str], tile_size: int, warmup: int, repeats: int,
                  dtype: torch.dtype = torch.float32, detector: bool = False,
                  log: Callable[[str], None] = print) -> List[Row]:
    """All rows, Detectron2's dense backbone (and detector) first for each size.
    ``points`` of None keep the halting of the loaded weights (a trained model).
    Latencies are measured first; peak memory afterwards, row by row."""
    if detector and dtype != torch.float32:
        # Detectron2's proposal and NMS code mixes the model's dtype with float32
        # boxes, and fails on a model cast to half precision.
        raise ValueError("the whole-detector comparison runs in float32 only: drop --detector "
                         "or --half/--bf16")
    device = torch.device(cfg.MODEL.DEVICE)
    model, sact, reference = _build(cfg, device, dtype)
    tiled = None
    if "tiled" in executions:
        tiled = build_backbone(_with_tile_size(cfg, tile_size)).to(device=device, dtype=dtype).eval()
        tiled.load_state_dict(sact.state_dict())
    d2_detector = _detectron2_detector(cfg, model, device, dtype) if detector else None
    rows, memory_jobs = [], []

    def add(row, fn, x, prepare=lambda: None):
        rows.append(row)
        memory_jobs.append((row, fn, x, prepare))
        log(_format(row))

    for height, width in sizes:
        size = f"{height}x{width}"
        x = benchmark_image(cfg, height, width).to(device=device, dtype=dtype)
        base_ms, _ = paired_time_ms(reference, reference, x, warmup, repeats)
        add(Row("detectron2 ResNet (dense)", size, None, 100.0, base_ms, 1.0, 1.0, 1.0, float("nan")), reference, x)
        if detector:
            raw = [{"image": _raw_image(cfg, x)}]

            def d2_detect(_):
                return d2_detector(raw)

            def sact_detect(_):
                return model(raw)
        models = {e: (tiled if e == "tiled" else sact) for e in executions}
        if any(p is not None for p in points):
            for backbone in set(models.values()):
                set_halting_profile(backbone, x)
        for point in points:
            offsets = {}
            for execution, backbone in models.items():
                backbone.execution = "perforated"  # the fastest; FLOPs do not depend on the execution
                if point is None:
                    offset, reached = None, flops_pct(backbone, x)
                elif id(backbone) not in offsets:
                    offset, reached = offsets[id(backbone)] = calibrate(backbone, x, point)
                else:
                    offset, reached = offsets[id(backbone)]
                    _shift_bias(backbone, offset)
                backbone.execution = execution

                def prepare(backbone=backbone, execution=execution, offset=offset):
                    backbone.execution = execution
                    if offset is not None:
                        _shift_bias(backbone, offset)

                def run(t, backbone=backbone):
                    return backbone.forward_with_sact(t, [(height, width)])

                paired_base, ms = paired_time_ms(reference, run, x, warmup, repeats)
                ratio = reached / 100
                add(Row(f"SACT {execution}", size, point, reached, ms, paired_base / ms, ratio,
                        paired_base / ms * ratio, float("nan")), run, x, prepare)
                if detector and backbone is sact and execution != "dense":
                    det_base, det_ms = paired_time_ms(d2_detect, sact_detect, x, 1, max(1, repeats // 2))
                    if not any(r.model.startswith("detector: detectron2") and r.size == size for r in rows):
                        add(Row("detector: detectron2 R-C4", size, None, 100.0, det_base, 1.0, 1.0, 1.0,
                                float("nan")), d2_detect, x)
                    add(Row(f"detector: SACT {execution}", size, point, reached, det_ms, det_base / det_ms,
                            ratio, float("nan"), float("nan")), sact_detect, x, prepare)
    for row, fn, x, prepare in memory_jobs:
        prepare()
        row.peak_mem_mb = peak_memory_mb(fn, x)
    return rows


@torch.no_grad()
def profile_point(cfg, height: int, width: int, target_pct: float, execution: str = "perforated",
                  repeats: int = 3) -> str:
    """Where the time goes at one operating point: each block's active share per
    unit, per-block latency (min of ``repeats``) beside Detectron2's blocks, and
    PyTorch's profiler table of the SACT feature extractor."""
    device = torch.device(cfg.MODEL.DEVICE)
    _, sact, reference = _build(cfg, device, torch.float32)
    x = benchmark_image(cfg, height, width).to(device)
    set_halting_profile(sact, x)
    sact.execution = "perforated"
    _, reached = calibrate(sact, x, target_pct)
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
    reference_blocks = [("stem", reference.stem)] + [
        (name, getattr(reference, name)) for name in sact.stage_names]
    for label, blocks in (("SACT", sact_blocks), ("detectron2", reference_blocks)):
        times = {}
        for _ in range(repeats):
            h = x
            for name, block in blocks:
                start = time.perf_counter()
                h = block(h)
                if h.is_cuda:
                    torch.cuda.synchronize()
                times.setdefault(name, []).append(1000 * (time.perf_counter() - start))
        lines.append(f"  {label} block latency (ms, min of {repeats}): " +
                     ", ".join(f"{name} {min(t):.1f}" for name, t in times.items()))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        sact.forward_with_sact(x, [(height, width)])
    lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return "\n".join(lines)


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


def _format(row: Row) -> str:
    target = "" if row.target_pct is None else f"(target {row.target_pct:.0f}%)"
    return (f"{row.size:>9} {row.model:<27} FLOPs {row.flops_pct:5.1f}% {target:<13} "
            f"{row.median_ms:9.1f} ms  speedup {row.speedup:5.2f}x  efficiency {row.efficiency:4.2f}")


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| size | model | target % | FLOPs % | median ms | speedup | efficiency | peak MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        target = "" if r.target_pct is None else f"{r.target_pct:.0f}"
        lines.append(f"| {r.size} | {r.model} | {target} | {r.flops_pct:.1f} | {r.median_ms:.1f} | "
                     f"{r.speedup:.2f} | {r.efficiency:.2f} | {r.peak_mem_mb:.1f} |")
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[Row]) -> List[dict]:
    return [asdict(r) for r in rows]
