#!/usr/bin/env python
r"""The test-time halting offset that meets a FLOPs budget, by bisection on a dataset.

    python tools/halting_budget.py --config-file configs/synthetic/sact_tiny.yaml --target-flops 50 \
        MODEL.WEIGHTS output/demo/model_final.pth

Prints one line per search step (an evaluation of the dataset at one offset;
--verbose adds the evaluators' tables), then the offset -> (FLOPs %, AP) table
by offset and the offset to use (``MODEL.SACT.TEST_HALTING_OFFSET``) with
--eval-only, the visualiser or the benchmark. A budget that no offset reaches
is an error that gives the range. Config overrides (KEY VALUE ...) end the
command line, or follow --opts.
"""
import itertools
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.budget import format_points, run_budget_search
from sact_det.data import SYNTHETIC_SPLITS, ensure_synthetic
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_config_arguments, non_negative_int, positive_float, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--target-flops", type=positive_float, required=True, metavar="PCT",
                        help="mean feature-extractor FLOPs to reach, in %% of the dense reference (at most 200)")
    parser.add_argument("--dataset", help="registered dataset (default: the first of DATASETS.TEST)")
    parser.add_argument("--num-images", type=non_negative_int, default=0,
                        help="evaluate the first N images only (0: all)")
    parser.add_argument("--tolerance", type=positive_float, default=0.5, help="percentage points")
    parser.add_argument("--verbose", action="store_true",
                        help="also print each evaluation's COCO tables and SACT summary")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    if args.target_flops > 200:
        parser.error(f"argument --target-flops: expected a percentage in (0, 200], got {args.target_flops:g}")
    cfg = load_config(args.config_file, args.opts, parser)
    setup_logger(name="sact_det")

    def search():
        dataset = args.dataset or cfg.DATASETS.TEST[0]
        if dataset in SYNTHETIC_SPLITS:
            ensure_synthetic(names=[dataset])
        # A budget that no offset reaches is a BudgetError (ValueError) that gives the range.
        steps = itertools.count(1)

        def step(point):
            ap = "-" if point.ap is None else f"{point.ap:.1f}"
            print(f"step {next(steps)}: offset {point.offset:+.4f}: FLOPs {point.flops_pct:.1f}% of dense, "
                  f"box AP {ap}", flush=True)
        best, points = run_budget_search(cfg, args.target_flops, dataset, args.num_images, args.tolerance,
                                         on_step=step, verbose=args.verbose)
        print()
        print(format_points(points))
        print(f"\noffset {best.offset:+.4f}: {best.flops_pct:.1f}% FLOPs (target {args.target_flops:g}%), "
              f"box AP {best.ap if best.ap is None else round(best.ap, 1)} on "
              + (f"the first {args.num_images} images of " if args.num_images else "") + dataset)
        print(f"use: MODEL.SACT.TEST_HALTING_OFFSET {best.offset:.4f}")
    return run_tool(search, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
