#!/usr/bin/env python
r"""The training images with their boxes and class names, as annotated or as the
data loader yields them after augmentation (Detectron2's Visualizer).

    python tools/visualize_data.py --config-file configs/synthetic/sact_tiny.yaml \
        --source annotation --output data_vis --num 8
    python tools/visualize_data.py --config-file configs/synthetic/sact_tiny.yaml \
        --source dataloader --output data_vis_aug --num 8

Shows DATASETS.TRAIN (override it at the end: ... DATASETS.TRAIN '("synthetic_val",)'; config
overrides KEY VALUE end the command line, or follow --opts).
"""
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.browse import SOURCES, browse_dataset
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_config_arguments, output_dir, positive_int, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--source", required=True, choices=SOURCES,
                        help="annotation: the images as stored; dataloader: after augmentation")
    parser.add_argument("--output", required=True, type=output_dir, metavar="DIR", help="output directory")
    parser.add_argument("--num", type=positive_int, default=20, help="number of images (default 20)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)

    def browse():
        setup_logger(name="sact_det")
        cfg = load_config(args.config_file, args.opts)
        written = browse_dataset(cfg, args.source, args.output, args.num)
        print(f"{len(written)} image(s) written to {args.output}")
    return run_tool(browse, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
