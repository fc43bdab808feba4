#!/usr/bin/env python
r"""Parameters, FLOPs, activations and structure of a SACT detector, as
Detectron2's tools/analyze_model.py, with the halting branches apart and the
paper's FLOP convention next to fvcore's.

    python tools/analyze_model.py --config-file configs/synthetic/sact_tiny.yaml \
        --tasks parameter flop --num-inputs 10 MODEL.WEIGHTS output/demo/model_final.pth
    python tools/analyze_model.py --config-file configs/sact_faster_rcnn.yaml --tasks flop \
        --sizes 600x800 800x1333 MODEL.WEIGHTS ""

FLOPs and activations are counted on the first --num-inputs images of
DATASETS.TEST (mean ± std) or, with --sizes, on one random image per
network-input size (no resizing). Config overrides (KEY VALUE ...) end the
command line, or follow --opts.
"""
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.analysis import TASKS, analyze_model
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_config_arguments, image_size, positive_int, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=["parameter", "flop"],
                        help="what to report (default: parameter flop)")
    parser.add_argument("--num-inputs", type=positive_int, default=10,
                        help="dataset images to average over (default 10)")
    parser.add_argument("--sizes", nargs="+", type=image_size, default=[], metavar="HxW",
                        help="network-input sizes of random images, instead of dataset images")
    add_config_arguments(parser)
    args = parser.parse_args(argv)

    def analyze():
        setup_logger(name="sact_det")
        cfg = load_config(args.config_file, args.opts)
        print(analyze_model(cfg, args.tasks, args.num_inputs, args.sizes))
    return run_tool(analyze, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
