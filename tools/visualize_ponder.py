#!/usr/bin/env python
r"""Ponder cost maps of a SACT detector or classifier over images (a detector also
over a video): where it spends computation.

    python tools/visualize_ponder.py --config-file configs/synthetic/sact_tiny.yaml \
        --input img.jpg photos/ 'more/*.png' --output ponder_out \
        MODEL.WEIGHTS output/demo/model_final.pth
    python tools/visualize_ponder.py --config-file configs/synthetic/sact_tiny.yaml \
        --video-input clip.mp4 --output ponder_out MODEL.WEIGHTS output/demo/model_final.pth

Images: writes <name>_ponder.png (a detector's detections, or a classifier's
top-5 classes, beside the total ponder map), <name>_blocks.png, <name>_overlay.png
per image and ponder_summary.csv/.json. A classifier's images are resized as
INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST say, whole (no crop). Unreadable images are reported and skipped; the
exit status is 1 if any input failed.
Video: writes <name>_ponder.mp4 (every frame with its detections over the
ponder heat map, one colour scale for the whole video) and <name>_ponder.csv
(per frame: FLOPs, % of dense, ponder cost, detections).
Config overrides (KEY VALUE ...) end the command line, or follow --opts.
Detectron2's demo, the detections beside the ponder cost, is tools/demo.py.
"""
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.video import visualize_video
from sact_det.apps.visualization import visualize_files
from sact_det.config import is_classifier
from sact_det.engine.defaults import load_config
from sact_det.engine.predictor import SACTPredictor
from sact_det.utils.cli import (ToolParser, add_config_arguments, check_range, existing_file, output_dir, probability,
                                run_tool)


def build_parser():
    parser = ToolParser(__doc__)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--input", nargs="+", help="image files, directories or glob patterns")
    inputs.add_argument("--video-input", type=existing_file, metavar="FILE", help="a video file")
    parser.add_argument("--output", required=True, type=output_dir, metavar="DIR", help="output directory")
    parser.add_argument("--score-threshold", type=probability, default=0.5, help="minimum score of drawn detections")
    parser.add_argument("--ponder-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="fixed colour scale for all images (default: each map's own min/max)")
    parser.add_argument("--label-units", action="store_true",
                        help="label each detection with the units its proposal ran in an ACT box head")
    add_config_arguments(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_range(parser, "--ponder-range", args.ponder_range)
    cfg = load_config(args.config_file, args.opts, parser)
    if args.video_input and is_classifier(cfg):
        parser.error("argument --video-input: needs a detector config (MODEL.META_ARCHITECTURE SACTRCNN); "
                     "for a classifier give images with --input")
    setup_logger(name="sact_det")
    setup_logger(name="fvcore")

    def video():
        path, table, frames = visualize_video(SACTPredictor(cfg), args.video_input, args.output,
                                              args.score_threshold, args.ponder_range)
        print(f"{frames} frames written to {path}; per-frame FLOPs and ponder cost in {table}")

    def images():
        records, failures = visualize_files(SACTPredictor(cfg), args.input, args.output, args.score_threshold,
                                            args.ponder_range, label_units=args.label_units)
        print(f"{len(records) - len(failures)} image(s) written to {args.output}; {len(failures)} failed")
        for path, reason in failures:
            print(f"  FAILED {path}: {reason}", file=sys.stderr)
        return 1 if failures else 0
    return run_tool(video if args.video_input else images, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
