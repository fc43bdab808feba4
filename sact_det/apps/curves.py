"""Training curves from Detectron2's ``metrics.json`` (``tools/plot_metrics.py``).

Detectron2's ``JSONWriter`` appends one JSON object per line to
``OUTPUT_DIR/metrics.json``: the iteration, the (window-smoothed) losses,
``lr``, timings, the SACT trainer's ``sact/ponder_cost/<block>`` and
``sact/units/<block>``, and after each evaluation its results (``bbox/AP``,
``sact/FLOPs_pct``, ...; with several test sets, each prefixed by its
dataset: ``synthetic_val/bbox/AP``). :func:`plot_metrics` draws one panel per
quantity (and test set) against the iteration, with several runs overlaid in
one colour each.
"""
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
import numpy as np

from sact_det.utils.files import atomic_path

__all__ = ["METRICS_FILE", "FIGURE_FORMATS", "find_metrics", "read_metrics", "metric_series", "panel_keys",
           "metrics_figure", "plot_metrics"]

METRICS_FILE = "metrics.json"
FIGURE_FORMATS = (".png", ".pdf", ".svg")  # chosen by the output's extension
logger = logging.getLogger("sact_det")
Series = Dict[str, Tuple[np.ndarray, np.ndarray]]  # key -> (iterations, values)

# Panels, in order: a key matches the first pattern it fits; unmatched keys are not drawn.
# Evaluation results of a run with several test sets are prefixed by the dataset's name.
EVALUATION_PREFIX = r"(?:[^/]+/)?"
PANEL_PATTERNS = (
    r"total_loss", r"loss_(?!ponder$).+", r"loss_ponder",
    r"sact/ponder_cost/.+", r"sact/units/.+",
    r"lr", EVALUATION_PREFIX + r"bbox/AP", EVALUATION_PREFIX + r"sact/FLOPs_pct",
)


def find_metrics(path: str) -> str:
    """``metrics.json`` of a training OUTPUT_DIR, or ``path`` itself when it is the file."""
    candidate = os.path.join(path, METRICS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(candidate):
        raise FileNotFoundError(f"OUTPUT_DIR {path!r}: expected a training output directory with "
                                f"{METRICS_FILE} (or the file itself)")
    return candidate


def read_metrics(path: str) -> List[dict]:
    """The records of a ``metrics.json`` (JSON lines). Lines that are not JSON
    objects are skipped with a warning: an interrupted run leaves a line cut
    short, to which a resumed run appends. A file without any record is an error."""
    records, skipped = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = False
            if isinstance(record, dict):
                records.append(record)
            elif record is not None:
                skipped.append(number)
    if skipped:
        logger.warning(f"{path}: skipped {len(skipped)} line(s) that are not JSON objects "
                       f"(e.g. line {skipped[0]}; an interrupted write?)")
    if not records:
        raise ValueError(f"{path}: no metrics recorded (expected JSON lines of Detectron2's JSONWriter)")
    return records


def metric_series(records: Sequence[dict]) -> Series:
    """Numeric values by key, sorted by iteration; for an iteration written
    twice (a run resumed from an earlier checkpoint) the later value wins."""
    by_key: Dict[str, Dict[int, float]] = {}
    for record in records:
        iteration = record.get("iteration")
        if not isinstance(iteration, (int, float)):
            continue
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                by_key.setdefault(key, {})[int(iteration)] = float(value)
    return {key: (np.array(sorted(points)), np.array([points[i] for i in sorted(points)]))
            for key, points in by_key.items()}


def panel_keys(all_series: Sequence[Series]) -> List[str]:
    """The keys to draw over all runs, in :data:`PANEL_PATTERNS` order (keys of
    one pattern sorted, so blocks appear as res2, res3, res4, total)."""
    keys = set().union(*all_series)
    ordered = []
    for pattern in PANEL_PATTERNS:
        ordered += sorted(k for k in keys if re.fullmatch(pattern, k) and k not in ordered)
    return ordered


def _labels(runs: Sequence[str], labels: Optional[Sequence[str]]) -> List[str]:
    if labels:
        if len(labels) != len(runs):
            raise ValueError(f"--labels: expected one label per run ({len(runs)}), got {len(labels)}")
        return list(labels)
    names = [os.path.basename(os.path.normpath(r if os.path.isdir(r) else os.path.dirname(r) or "."))
             for r in runs]
    return names if len(set(names)) == len(names) else list(runs)


def metrics_figure(all_series: Sequence[Series], names: Sequence[str], columns: int = 4):
    """The figure of :func:`plot_metrics`: one panel per key of :func:`panel_keys`,
    one colour per run, one legend."""
    keys = panel_keys(all_series)
    if not keys:
        raise ValueError("no training curves found: expected keys such as total_loss, loss_ponder, "
                         "sact/ponder_cost/res2, lr or bbox/AP")
    rows = -(-len(keys) // columns)
    fig = Figure(figsize=(4 * columns, 3 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    colours = matplotlib.colormaps.get_cmap("tab10")
    for ax, key in zip(axes.flat, keys):
        for index, (series, name) in enumerate(zip(all_series, names)):
            if key in series:
                iterations, values = series[key]
                # Evaluations are few: markers show each one.
                ax.plot(iterations, values, color=colours(index % 10), label=name,
                        marker="o" if len(values) < 20 else None, markersize=3, linewidth=1)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    legend = {}  # one legend for the figure, every run in it once
    for ax in axes.flat[: len(keys)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(len(names), 4), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3 * rows)))
    return fig


def plot_metrics(runs: Sequence[str], output: str, labels: Optional[Sequence[str]] = None) -> List[str]:
    """Writes the training curves of ``runs`` (OUTPUT_DIRs or ``metrics.json``
    files) overlaid, one panel per quantity, as PNG, PDF or SVG (by the
    extension of ``output``); returns the keys drawn."""
    extension = os.path.splitext(output)[1].lower()
    if extension not in FIGURE_FORMATS:
        raise ValueError(f"{output}: expected a file name ending in {', '.join(FIGURE_FORMATS)}")
    all_series = [metric_series(read_metrics(find_metrics(run))) for run in runs]
    fig = metrics_figure(all_series, _labels(runs, labels))
    with atomic_path(output) as temporary:
        fig.savefig(temporary, format=extension[1:], dpi=80)
    return panel_keys(all_series)
