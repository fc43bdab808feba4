#!/usr/bin/env python
r"""Latency of the SACT feature extractor (and detector) vs Detectron2's dense
ResNet-C4, tuned (batch norm folded, channels-last, fused kernels) and stock,
side by side in one run, same weights, at controlled shares of dense FLOPs.

    python tools/benchmark.py                                  # CPU, 600x800, 5 operating points
    python tools/benchmark.py --sizes 600x800 800x1333 --executions dense perforated tiled
    python tools/benchmark.py --detector --points 100 56 25 --head-points 100 50 45   # whole detector, ACT head
    python tools/benchmark.py --device cuda --half             # GPU, fp16
    python tools/benchmark.py --config-file CFG --weights model_final.pth --points trained
    python tools/benchmark.py --profile 56                      # where the time goes at 56 %
    python tools/benchmark.py --crossover 0.1 0.3 0.5 0.7 0.9 1  # dense vs sparse per unit: SPARSE_MAX_ACTIVE

Prints one line per configuration and, with --markdown, a table for BENCHMARKS.md.
Config overrides (KEY VALUE ...) end the command line, or follow --opts.
"""
import argparse
import json
import sys
from datetime import date

import torch

from sact_det.apps.benchmark.crossover import unit_crossover
from sact_det.apps.benchmark.profile import profile_point
from sact_det.apps.benchmark.runner import run_benchmark
from sact_det.apps.benchmark.tables import crossover_table, markdown_table, rows_as_dicts
from sact_det.apps.benchmark.timing import machine_description
from sact_det.config import get_config_file
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import (ToolParser, add_config_arguments, image_size, non_negative_int, output_file,
                                percentage, positive_float, positive_int, run_tool)
from sact_det.utils.files import atomic_path


def flops_point(text: str):
    """``type=`` for a ``--points`` value: a percentage of the dense FLOPs in
    (0, 100] (no halting reaches more than evaluating every unit), or 'trained' (None)."""
    if text == "trained":
        return None
    try:
        return percentage(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a percentage of the dense FLOPs in (0, 100] or 'trained', "
                                         f"got {text!r}") from None


def active_share(text: str) -> float:
    """``type=`` for a ``--crossover`` value: a share of active positions in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected an active share in (0, 1], got {text!r}")
    return value


def build_parser():
    parser = ToolParser(__doc__)
    parser.add_argument("--weights", default="", help="trained weights (default: random, seeded)")
    parser.add_argument("--sizes", nargs="+", type=image_size, default=[(600, 800)], help="HxW of the input image")
    parser.add_argument("--points", nargs="+", type=flops_point, default=[100.0, 75.0, 56.0, 40.0, 25.0],
                        help="FLOPs in %% of dense to calibrate the halting biases to, or 'trained' "
                             "(the halting of the loaded weights)")
    parser.add_argument("--executions", nargs="+", default=["dense", "perforated", "tiled"],
                        choices=["dense", "perforated", "tiled"])
    parser.add_argument("--tile-size", type=positive_int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=non_negative_int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--half", action="store_true", help="float16 on CUDA")
    parser.add_argument("--bf16", action="store_true", help="bfloat16")
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--detector", action="store_true",
                        help="also time the whole detector (Detectron2's Faster R-CNN R-C4 vs SACT)")
    parser.add_argument("--head-points", nargs="+", type=percentage, metavar="PCT",
                        help="with --detector: the ACT box head's FLOPs in %% of its dense FLOPs, paired with "
                             "--points (sets MODEL.SACT.HEAD_TYPE act)")
    parser.add_argument("--profile", type=percentage, metavar="PCT",
                        help="instead of the table: per-block latency and profiler table at PCT %% FLOPs "
                             "(float32, first size, first execution other than dense)")
    parser.add_argument("--crossover", nargs="+", type=active_share, metavar="SHARE",
                        help="instead of the table: time one unit of every block densely, perforated and tiled "
                             "at these active shares (0-1), and print where sparse execution stops paying "
                             "(what MODEL.SACT.SPARSE_MAX_ACTIVE should be on this machine)")
    parser.add_argument("--json", type=output_file(), help="write the rows to this file")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table at the end")
    add_config_arguments(parser, default=get_config_file("sact_faster_rcnn.yaml"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    head = ["MODEL.SACT.HEAD_TYPE", "act"] if args.head_points else []
    cfg = load_config(args.config_file, ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", args.weights, *head,
                                         *args.opts], parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.half else torch.bfloat16 if args.bf16 else torch.float32

    def benchmark():
        print(f"# {date.today()} | torch {torch.__version__} | {machine_description(torch.device(args.device))} | "
              f"{dtype} | config {args.config_file}")
        if args.crossover:
            records, crossover = unit_crossover(cfg, *args.sizes[0], args.crossover, args.tile_size, args.repeats)
            print(crossover_table(records, crossover))
            return
        if args.profile is not None:
            execution = next((e for e in args.executions if e != "dense"), "dense")
            print(profile_point(cfg, *args.sizes[0], args.profile, execution))
            return
        # A combination of options that cannot run is a ValueError saying which.
        rows = run_benchmark(cfg, args.sizes, args.points, args.executions, args.tile_size, args.warmup,
                             args.repeats, dtype=dtype, detector=args.detector, head_points=args.head_points)
        if args.json:
            with atomic_path(args.json) as temporary, open(temporary, "w") as f:
                json.dump({"args": vars(args), "rows": rows_as_dicts(rows)}, f, indent=1)
        if args.markdown:
            print(markdown_table(rows))
    return run_tool(benchmark, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
