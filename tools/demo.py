#!/usr/bin/env python
"""CPU demo: generate the synthetic dataset, train a small SACT detector from
scratch, evaluate it (COCO box AP + FLOPs/ponder report) and write ponder cost
overlays for a few validation images.

    python tools/demo.py                          # output/demo, ~10 minutes on 2 cores
    python tools/demo.py --output-dir out SOLVER.MAX_ITER 300
"""
import argparse
import sys

from sact_det.apps.demo import DEMO_CONFIG, run_demo
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, existing_file, non_negative_int, output_dir, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--output-dir", default="output/demo", type=output_dir, metavar="DIR")
    parser.add_argument("--config-file", default=DEMO_CONFIG, type=existing_file, metavar="FILE")
    parser.add_argument("--num-overlays", type=non_negative_int, default=6)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    load_config(args.config_file, args.opts, parser)  # before the dataset and the training

    def demo():
        run_demo(args.output_dir, args.config_file, args.num_overlays, args.opts)
    return run_tool(demo, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
