"""Timing and memory: latencies taken in turn (ratios robust to a shared
machine's drift), peak memory, and where a detector's time goes."""
import time
from contextlib import contextmanager
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

from sact_det.utils.noise import quiet_profiler_logs

__all__ = ['machine_description', 'time_round_robin', 'peak_memory_mb', 'time_breakdown']


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
    quiet_profiler_logs()
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
