#!/usr/bin/env python
"""Training curves (PNG, PDF or SVG, by the extension of --output) from
Detectron2's metrics.json of one or more runs, overlaid: total and each loss,
loss_ponder, ponder cost and units per block, learning rate, and the
evaluations' box AP (bbox/AP) and FLOPs (sact/FLOPs_pct), one panel per test
set when a run evaluates several (synthetic_val/bbox/AP, ...).

    python tools/plot_metrics.py output/demo --output curves.png
    python tools/plot_metrics.py output/sact_tau0.005 output/sact_tau0.001 --labels 0.005 0.001 --output tau.pdf
"""
import sys

from sact_det.apps.curves import FIGURE_FORMATS, plot_metrics
from sact_det.utils.cli import ToolParser, output_file, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("runs", nargs="+", metavar="OUTPUT_DIR",
                        help="training output directory (with metrics.json), or a metrics.json file")
    parser.add_argument("--output", required=True, type=output_file(*FIGURE_FORMATS, create_parent=True),
                        help="figure to write: .png, .pdf or .svg")
    parser.add_argument("--labels", nargs="+", help="legend label per run (default: directory names)")
    args = parser.parse_args(argv)

    def plot():
        keys = plot_metrics(args.runs, args.output, args.labels)
        print(f"{len(keys)} curves of {len(args.runs)} run(s) written to {args.output}")
    return run_tool(plot, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
