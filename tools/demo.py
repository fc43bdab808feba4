#!/usr/bin/env python
"""CPU demo: generate the synthetic dataset, train a small SACT detector from
scratch, evaluate it (COCO box AP + FLOPs/ponder report) and write ponder cost
overlays for a few validation images.

    python tools/demo.py                          # output/demo, ~10 minutes on 2 cores
    python tools/demo.py --output-dir out SOLVER.MAX_ITER 300
"""
import argparse

from sact_det.demo import DEMO_CONFIG, run_demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--num-overlays", type=int, default=6)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    run_demo(args.output_dir, args.config_file, args.num_overlays, args.opts)
