"""Benchmark rows and their tables (console, Markdown, JSON)."""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

__all__ = ['Row', 'format_row', 'markdown_table', 'rows_as_dicts', 'crossover_table']


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
