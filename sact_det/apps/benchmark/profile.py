"""Where the time goes at one operating point (``tools/benchmark.py --profile``)."""
import time

import torch

from sact_det.apps.benchmark.models import build_compared_models
from sact_det.apps.benchmark.points import benchmark_image, calibrate, flops_pct, set_halting_profile
from sact_det.apps.benchmark.tuned import TunedBackbone
from sact_det.utils.noise import quiet_profiler_logs

__all__ = ['profile_point']


@torch.no_grad()
def profile_point(cfg, height: int, width: int, target_pct: float, execution: str = "perforated",
                  repeats: int = 3) -> str:
    """Where the time goes at one operating point: each block's active share per
    unit, per-block latency (min of ``repeats``) beside the tuned dense network's
    blocks, and PyTorch's profiler table of the SACT feature extractor (with
    the executor's own scopes: ``sact::unit``, ``sact::halting``,
    ``sact::accumulate``, ``sact::bookkeeping``)."""
    device = torch.device(cfg.MODEL.DEVICE)
    model, stock = build_compared_models(cfg, device, torch.float32)
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
    quiet_profiler_logs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        sact.forward_with_sact(x, [(height, width)])
    averages = prof.key_averages()
    scopes = [e for e in averages if e.key.startswith("sact::")]
    if scopes:
        lines.append("  executor scopes (CPU ms): " + ", ".join(
            f"{e.key} {e.cpu_time_total / 1000:.1f}" for e in sorted(scopes, key=lambda e: -e.cpu_time_total)))
    lines.append(averages.table(sort_by="self_cpu_time_total", row_limit=14))
    return "\n".join(lines)
