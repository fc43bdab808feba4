#!/usr/bin/env python
"""The training demo (``make demo``): generate the synthetic dataset, train a
small SACT detector from scratch on the CPU, evaluate it (COCO box AP +
FLOPs/ponder report) and write ponder cost overlays for a few validation images.
For inference on your own images, Detectron2's demo, see tools/demo.py.

    python tools/train_demo.py                          # output/demo, ~10 minutes on 2 cores
    python tools/train_demo.py --output-dir out SOLVER.MAX_ITER 300
"""
import sys

from sact_det.apps.train_demo import DEMO_CONFIG, run_training_demo
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_config_arguments, non_negative_int, output_dir, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--output-dir", default="output/demo", type=output_dir, metavar="DIR")
    parser.add_argument("--num-overlays", type=non_negative_int, default=6)
    add_config_arguments(parser, default=DEMO_CONFIG)
    args = parser.parse_args(argv)
    load_config(args.config_file, args.opts, parser)  # before the dataset and the training

    def demo():
        run_training_demo(args.output_dir, args.config_file, args.num_overlays, args.opts)
    return run_tool(demo, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
