#!/usr/bin/env python
"""The trade-off ladder (paper Table 1, Fig. 7 in miniature): trains SACT at three
tau, ACT at two, non-adaptive ResNets with fewer units per block, each with
--seeds seeds, on the synthetic data with the tiny configs; evaluates each and
tables its accuracy against its FLOPs. Resumes after a kill (finished members
are skipped).

--task detection (default): the tiny detector (synthetic/sact_tiny.yaml), box AP
against feature-extractor FLOPs, and one SACT model's test-time halting offsets.
--task classification: the tiny classifier (synthetic/cls_sact_tiny.yaml),
top-1 against the whole network's FLOPs (Fig. 7); plain ResNets with fewer
units in res2-res5 down from the full 3-4-6-3; no offset curve; the table says
whether the ladder is informative (its plain networks further apart than
twice the spread between seeds).

    python tools/tradeoff.py                         # default ladder, 2 seeds: 18 trainings of about 7 minutes on 2 cores
    python tools/tradeoff.py --quick --output output/tradeoff_quick     # 1 seed, 5 trainings of 150 iterations
    python tools/tradeoff.py --task classification --seeds 3 --jobs 2 --output output/tradeoff_cls
    python tools/tradeoff.py --table-only --output output/tradeoff_cls  # the table of what is done so far

Writes OUTPUT/tradeoff.json, tradeoff.md (table) and tradeoff.png (accuracy vs
FLOPs %), rewritten after every member from the members done so far (how many
of how many, which failed). Each member trains in OUTPUT/<member>/ (its log:
train.log); --jobs N trains N members side by side, each on one thread. The
tool says which member of how many starts, and every minute, for each one
training, its iteration and the time left.
Config overrides for every member (KEY VALUE ...) end the command line, or follow --opts.
"""
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.tradeoff import DETECTION, TASKS, run_tradeoff, table_only
from sact_det.config import get_config_file
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_override_arguments, non_negative_float, output_dir, positive_int, run_tool

DEFAULT_OUTPUT = {"detection": "output/tradeoff", "classification": "output/tradeoff_cls"}


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--task", choices=sorted(TASKS),
                        help="the detector's ladder (the default) or the classifier's; "
                             "with --table-only, the one in DIR")
    parser.add_argument("--output", type=output_dir, metavar="DIR",
                        help="output directory (state, table, plot; default output/tradeoff, "
                             "for classification output/tradeoff_cls)")
    parser.add_argument("--seeds", type=positive_int, default=2, help="seeds per member (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer members, a quarter of the iterations")
    parser.add_argument("--max-iter", type=positive_int,
                        help="training iterations per member (default: " + ", ".join(
                            f"{name} {task.max_iter}" for name, task in sorted(TASKS.items())) + ")")
    parser.add_argument("--taus", type=non_negative_float, nargs="*", metavar="TAU",
                        help="tau of the SACT members (default 0.005 0.01 0.02; quick 0.005 0.02; "
                             "none given: no SACT members, e.g. to run the plain networks first)")
    parser.add_argument("--act-taus", type=non_negative_float, nargs="*", metavar="TAU",
                        help="tau of the ACT members (default 0.005 0.02; quick 0.01; none given: no ACT members)")
    parser.add_argument("--offsets", type=float, nargs="*",
                        help="test-time halting offsets evaluated on one SACT detector (0 is the model itself; "
                             "default -2 -1 1 2 3); detection only")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="members trained side by side, each on one thread (default 1: one at a time, "
                             "on every thread)")
    parser.add_argument("--table-only", action="store_true",
                        help="write and print the table of DIR/tradeoff.json without training anything")
    add_override_arguments(parser)
    args = parser.parse_args(argv)
    output = args.output or DEFAULT_OUTPUT[args.task or DETECTION.name]
    if args.table_only:
        if args.opts:
            parser.error("--table-only trains nothing: config overrides have no effect")
        return run_tool(lambda: print(table_only(output, args.task), end=""), parser.prog)
    task = TASKS[args.task or DETECTION.name]
    if args.offsets and not task.offsets:
        parser.error(f"argument --offsets: test-time halting offsets are evaluated on detectors only, "
                     f"not in the {task.name} ladder")
    if args.opts:  # the same overrides for every member: checked once, before hours of training
        load_config(get_config_file(task.config), args.opts, parser)

    def tradeoff():
        setup_logger(name="sact_det")
        task.ensure_data()  # here, not by members training side by side, which would each generate it
        run_tradeoff(output, args.seeds, args.quick, args.max_iter, args.offsets, args.opts, task=task,
                     taus=args.taus, act_taus=args.act_taus, jobs=args.jobs)
        with open(f"{output}/tradeoff.md") as f:
            print(f.read(), end="")
        print(f"\nwritten: {output}/tradeoff.json, tradeoff.md, tradeoff.png")
    return run_tool(tradeoff, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
