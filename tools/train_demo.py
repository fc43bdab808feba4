#!/usr/bin/env python
"""The training demo (``make demo``): generate the synthetic dataset, fine-tune
a small SACT detector on the CPU from the shipped SACT classifier
(sact_det://synthetic_cls_sact_tiny.pth, the paper's two stages), evaluate it
(COCO box AP + FLOPs/ponder report) and write ponder cost overlays for a few
validation images. For inference on your own images, Detectron2's demo, see
tools/demo.py.

    python tools/train_demo.py                          # output/demo, ~10 minutes on 2 cores
    python tools/train_demo.py --output-dir out SOLVER.MAX_ITER 300
    python tools/train_demo.py --config-file configs/synthetic/sact_tiny.yaml   # from scratch
    python tools/train_demo.py --pretrain-classifier    # the first stage again: the shipped classifier

--pretrain-classifier trains configs/synthetic/cls_sact_tiny_res5x1.yaml (or
--config-file) on the synthetic classification set and writes its weights to
sact_det/weights/synthetic_cls_sact_tiny.pth (or --weights-output FILE),
printing the checksum.
"""
import sys

from sact_det.apps.train_demo import (DEMO_CONFIG, DEMO_OUTPUT_DIR, PRETRAIN_CONFIG, SHIPPED_CLASSIFIER,
                                     pretrain_classifier, run_training_demo)
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_config_arguments, non_negative_int, output_dir, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--output-dir", type=output_dir, metavar="DIR",
                        help=f"the training's directory (default: {DEMO_OUTPUT_DIR}; with --pretrain-classifier, the "
                             "config's OUTPUT_DIR)")
    parser.add_argument("--num-overlays", type=non_negative_int, default=6)
    parser.add_argument("--pretrain-classifier", action="store_true",
                        help="train the classifier the demo starts from instead, and write its weights")
    parser.add_argument("--weights-output", default=SHIPPED_CLASSIFIER, metavar="FILE",
                        help="with --pretrain-classifier: where (default: the shipped file)")
    add_config_arguments(parser, required=False)
    args = parser.parse_args(argv)
    config_file = args.config_file or (PRETRAIN_CONFIG if args.pretrain_classifier else DEMO_CONFIG)
    load_config(config_file, args.opts, parser)  # before the dataset and the training

    def demo():
        if args.pretrain_classifier:
            pretrain_classifier(args.weights_output, config_file, args.opts, args.output_dir)
        else:
            run_training_demo(args.output_dir or DEMO_OUTPUT_DIR, config_file, args.num_overlays, args.opts)
    return run_tool(demo, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
