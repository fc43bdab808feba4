#!/usr/bin/env python
"""Ponder cost maps of a SACT detector over images: where it spends computation.

    python tools/visualize_ponder.py --config-file configs/synthetic/sact_tiny.yaml \
        --input img.jpg photos/ 'more/*.png' --output ponder_out \
        --opts MODEL.WEIGHTS output/demo/model_final.pth

Writes <name>_ponder.png, <name>_blocks.png, <name>_overlay.png per image and
ponder_summary.csv/.json. Unreadable images are reported and skipped; the exit
status is 1 if any input failed.
"""
import argparse
import sys

from sact_det.cli import check_output_dir, check_range, load_config, probability, report_input_errors
from sact_det.config import fall_back_to_cpu
from sact_det.predictor import SACTPredictor
from sact_det.visualization import visualize_files
from detectron2.utils.logger import setup_logger


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="model config (YAML)")
    parser.add_argument("--input", nargs="+", required=True, help="image files, directories or glob patterns")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--score-threshold", type=probability, default=0.5, help="minimum score of drawn detections")
    parser.add_argument("--ponder-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="fixed colour scale for all images (default: each map's own min/max)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_range(parser, "--ponder-range", args.ponder_range)
    check_output_dir(parser, "--output", args.output)
    cfg = load_config(parser, args.config_file, args.opts)
    setup_logger(name="sact_det")
    setup_logger(name="fvcore")
    fall_back_to_cpu(cfg)
    with report_input_errors(parser):
        records, failures = visualize_files(SACTPredictor(cfg), args.input, args.output,
                                            args.score_threshold, args.ponder_range)
    print(f"{len(records) - len(failures)} image(s) written to {args.output}; {len(failures)} failed")
    for path, reason in failures:
        print(f"  FAILED {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
