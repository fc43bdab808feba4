#!/usr/bin/env python
"""The trade-off ladder (paper Table 1, Fig. 7 in miniature): trains SACT at three
tau, ACT at two, non-adaptive ResNets with fewer units per block, each with
--seeds seeds, on the synthetic data with the tiny configs; evaluates each
(box AP, feature-extractor FLOPs) and one SACT model's test-time halting
offsets. Resumes after a kill (finished members are skipped).

    python tools/tradeoff.py                         # default ladder, 2 seeds: 18 trainings of about 7 minutes on 2 cores
    python tools/tradeoff.py --quick --output output/tradeoff_quick     # 1 seed, 5 trainings of 150 iterations

Writes OUTPUT/tradeoff.json, tradeoff.md (table) and tradeoff.png (AP vs FLOPs %).
Each member trains in OUTPUT/<member>/ (its log: train.log); the tool says
which member of how many runs, and every minute its iteration and the time left.
Config overrides for every member (KEY VALUE ...) end the command line, or follow --opts.
"""
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.tradeoff import Member, markdown_table, run_tradeoff
from sact_det.config import get_config_file
from sact_det.data import ensure_synthetic
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_override_arguments, output_dir, positive_int, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--output", default="output/tradeoff", type=output_dir, metavar="DIR",
                        help="output directory (state, table, plot)")
    parser.add_argument("--seeds", type=positive_int, default=2, help="seeds per member (default ladder)")
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer members, 150 iterations")
    parser.add_argument("--max-iter", type=positive_int,
                        help="training iterations per member (default 600, quick 150)")
    parser.add_argument("--offsets", type=float, nargs="*", default=[-2.0, -1.0, 1.0, 2.0, 3.0],
                        help="test-time halting offsets evaluated on one SACT model (0 is the model itself)")
    add_override_arguments(parser)
    args = parser.parse_args(argv)
    if args.opts:  # the same overrides for every member: checked once, before hours of training
        load_config(get_config_file(Member.config), args.opts, parser)

    def tradeoff():
        setup_logger(name="sact_det")
        ensure_synthetic()
        rows = run_tradeoff(args.output, args.seeds, args.quick, args.max_iter, args.offsets, args.opts)
        print(markdown_table(rows, "synthetic_val"))
        print(f"\nwritten: {args.output}/tradeoff.json, tradeoff.md, tradeoff.png")
    return run_tool(tradeoff, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
