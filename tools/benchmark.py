#!/usr/bin/env python
"""Latency of the SACT feature extractor (and detector) vs Detectron2's dense
ResNet-C4, tuned (batch norm folded, channels-last, fused kernels) and stock,
side by side in one run, same weights, at controlled shares of dense FLOPs.

    python tools/benchmark.py                                  # CPU, 600x800, 5 operating points
    python tools/benchmark.py --sizes 600x800 800x1333 --executions dense perforated tiled
    python tools/benchmark.py --detector --points 100 56 25 --head-points 100 50 45   # whole detector, ACT head
    python tools/benchmark.py --device cuda --half             # GPU, fp16
    python tools/benchmark.py --config-file CFG --weights model_final.pth --points trained
    python tools/benchmark.py --profile 56                      # where the time goes at 56 %

Prints one line per configuration and, with --markdown, a table for BENCHMARKS.md.
"""
import argparse
import json
import os
import sys
from datetime import date

import torch

from sact_det.benchmark import machine_description, markdown_table, profile_point, rows_as_dicts, run_benchmark
from sact_det.config import get_sact_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "sact_faster_rcnn.yaml"))
    parser.add_argument("--weights", default="", help="trained weights (default: random, seeded)")
    parser.add_argument("--sizes", nargs="+", default=["600x800"], help="HxW of the input image")
    parser.add_argument("--points", nargs="+", default=["100", "75", "56", "40", "25"],
                        help="FLOPs in %% of dense to calibrate the halting biases to, or 'trained'")
    parser.add_argument("--executions", nargs="+", default=["dense", "perforated", "tiled"],
                        choices=["dense", "perforated", "tiled"])
    parser.add_argument("--tile-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--half", action="store_true", help="float16 on CUDA")
    parser.add_argument("--bf16", action="store_true", help="bfloat16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detector", action="store_true",
                        help="also time the whole detector (Detectron2's Faster R-CNN R-C4 vs SACT)")
    parser.add_argument("--head-points", nargs="+", type=float, metavar="PCT",
                        help="with --detector: the ACT box head's FLOPs in %% of its dense FLOPs, paired with "
                             "--points (sets MODEL.SACT.HEAD_TYPE act)")
    parser.add_argument("--profile", type=float, metavar="PCT",
                        help="instead of the table: per-block latency and profiler table at PCT %% FLOPs "
                             "(float32, first size, first execution other than dense)")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table at the end")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    head = ["MODEL.SACT.HEAD_TYPE", "act"] if args.head_points else []
    cfg = get_sact_cfg(args.config_file, ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", args.weights, *head,
                                          *args.opts])
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    points = [None] if args.points == ["trained"] else [float(p) for p in args.points]
    dtype = torch.float16 if args.half else torch.bfloat16 if args.bf16 else torch.float32
    print(f"# {date.today()} | torch {torch.__version__} | {machine_description(torch.device(args.device))} | "
          f"{dtype} | config {os.path.relpath(args.config_file, ROOT)}")
    if args.profile is not None:
        execution = next((e for e in args.executions if e != "dense"), "dense")
        print(profile_point(cfg, *sizes[0], args.profile, execution))
        return
    try:
        rows = run_benchmark(cfg, sizes, points, args.executions, args.tile_size, args.warmup, args.repeats,
                             dtype=dtype, detector=args.detector, head_points=args.head_points)
    except ValueError as e:  # a combination of options that cannot run: say which
        sys.exit(f"error: {e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows_as_dicts(rows)}, f, indent=1)
    if args.markdown:
        print(markdown_table(rows))


if __name__ == "__main__":
    main()
