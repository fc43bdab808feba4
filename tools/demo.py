#!/usr/bin/env python
r"""Detectron2's demo (demo/demo.py) for SACT detectors: detections with the
ponder cost map beside them, on images, a video or the camera.

    python tools/demo.py --config-file configs/synthetic/sact_tiny.yaml \
        --input datasets/synthetic_coco/val/000001.jpg 'datasets/synthetic_coco/val/00002*.jpg' \
        --output demo_out MODEL.WEIGHTS output/demo/model_final.pth
    python tools/demo.py --config-file configs/synthetic/sact_tiny.yaml --video-input clip.mp4 \
        --output demo_out MODEL.WEIGHTS output/demo/model_final.pth
    python tools/demo.py --config-file CFG --webcam --output demo_out MODEL.WEIGHTS model_final.pth

--input takes files, directories and glob patterns; each image is written to
--output (a directory, or a file name for one image) under its own name: its
detections beside the ponder cost map, with the feature extractor's FLOPs.
--video-input and --webcam (camera 0, until Ctrl-C) write <name>_ponder.mp4
(each frame's detections over its ponder heat map, FLOPs and ponder cost in a
corner) and <name>_ponder.csv (per frame) into the --output directory. Without
--output, an OpenCV with GUI support shows them in a window (Esc stops).
Config overrides (KEY VALUE ...) end the command line, or follow --opts.
The training demo (`make demo`) is tools/train_demo.py; the detailed ponder
maps per block, tools/visualize_ponder.py.
"""
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.demo import opencv_has_gui, output_is_file, run_demo
from sact_det.engine.defaults import load_config
from sact_det.engine.predictor import SACTPredictor
from sact_det.utils.cli import ToolParser, add_config_arguments, existing_file, output_dir, probability, run_tool


def build_parser():
    parser = ToolParser(__doc__)
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--input", nargs="+", help="image files, directories or glob patterns")
    inputs.add_argument("--video-input", type=existing_file, metavar="FILE", help="a video file")
    inputs.add_argument("--webcam", action="store_true", help="the camera (OpenCV's camera 0)")
    parser.add_argument("--output", type=output_dir, metavar="PATH",
                        help="directory (or, for one image, a file) to write to; default: show in a window")
    parser.add_argument("--confidence-threshold", type=probability, default=0.5,
                        help="minimum score of the detections kept and drawn (default 0.5)")
    add_config_arguments(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.input or args.video_input or args.webcam):
        parser.error("expected one of --input, --video-input or --webcam (the training demo of `make demo` "
                     "is tools/train_demo.py)")
    if args.output is None and not opencv_has_gui():
        parser.error("argument --output: required here: this OpenCV cannot open windows (opencv-python-headless); "
                     "give a directory to write to")
    if args.output is not None and not args.input and output_is_file(args.output):
        parser.error(f"argument --output: expected a directory for --video-input and --webcam, got {args.output}")
    # As Detectron2's demo: the threshold is also the model's own test-time score threshold.
    cfg = load_config(args.config_file, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(args.confidence_threshold),
                                         *args.opts], parser)
    setup_logger(name="sact_det")

    def demo():
        return run_demo(SACTPredictor(cfg), args.input, args.video_input, args.webcam, args.output,
                        args.confidence_threshold)
    return run_tool(demo, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
