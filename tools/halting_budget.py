#!/usr/bin/env python
"""The test-time halting offset that meets a FLOPs budget, by bisection on a dataset.

    python tools/halting_budget.py --config-file configs/synthetic/sact_tiny.yaml --target-flops 50 \
        --opts MODEL.WEIGHTS output/demo/model_final.pth

Prints the offset -> (FLOPs %, AP) table it went through and the offset to use
(``MODEL.SACT.TEST_HALTING_OFFSET``) with --eval-only, the visualiser or the
benchmark. A budget that no offset reaches is an error that gives the range.
"""
import argparse
import sys

from sact_det.budget import BudgetError, format_points, run_budget_search
from sact_det.config import fall_back_to_cpu, get_sact_cfg
from sact_det.data import ensure_synthetic, SYNTHETIC_SPLITS
from detectron2.utils.logger import setup_logger


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="model config (YAML)")
    parser.add_argument("--target-flops", type=float, required=True, metavar="PCT",
                        help="mean feature-extractor FLOPs to reach, in %% of the dense reference")
    parser.add_argument("--dataset", help="registered dataset (default: the first of DATASETS.TEST)")
    parser.add_argument("--num-images", type=int, default=0, help="evaluate the first N images only (0: all)")
    parser.add_argument("--tolerance", type=float, default=0.5, help="percentage points")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if not 0 < args.target_flops <= 200:
        parser.error(f"--target-flops must be a percentage in (0, 200], got {args.target_flops:g}")
    if args.num_images < 0 or args.tolerance <= 0:
        parser.error("--num-images must be >= 0 and --tolerance > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="sact_det")
    cfg = get_sact_cfg(args.config_file, args.opts)
    fall_back_to_cpu(cfg)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    if dataset in SYNTHETIC_SPLITS:
        ensure_synthetic()
    try:
        best, points = run_budget_search(cfg, args.target_flops, dataset, args.num_images, args.tolerance)
    except BudgetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_points(points))
    print(f"\noffset {best.offset:+.4f}: {best.flops_pct:.1f}% FLOPs (target {args.target_flops:g}%), "
          f"box AP {best.ap if best.ap is None else round(best.ap, 1)} on {dataset}")
    print(f"use: MODEL.SACT.TEST_HALTING_OFFSET {best.offset:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
