"""The dense/sparse cost model per unit, measured (``tools/benchmark.py --crossover``)."""
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from sact_det.apps.benchmark.models import build_compared_models
from sact_det.apps.benchmark.points import benchmark_image
from sact_det.apps.benchmark.tuned import TunedBackbone

__all__ = ['unit_crossover']


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
    from sact_det.modeling.sparse.rows import BlockRows, MapLayout
    from sact_det.modeling.sparse.units import dense_unit, perforated_unit, tiled_unit

    device = torch.device(cfg.MODEL.DEVICE)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shares = sorted(shares)
    _, stock = build_compared_models(cfg, device, torch.float32)
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
