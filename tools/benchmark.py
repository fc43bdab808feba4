#!/usr/bin/env python
"""Latency of the SACT feature extractor vs Detectron2's dense ResNet-C4 backbone,
side by side in one run, same weights, at controlled shares of dense FLOPs.

    python tools/benchmark.py                                  # CPU, 600x800, 5 operating points
    python tools/benchmark.py --sizes 600x800 800x1333 --executions dense perforated tiled
    python tools/benchmark.py --device cuda --half             # GPU, fp16
    python tools/benchmark.py --config-file CFG --weights model_final.pth --points trained
    python tools/benchmark.py --profile 56                      # where the time goes at 56 %

Prints one line per configuration and, with --markdown, a table for BENCHMARKS.md.
"""
import argparse
import json
import os
from datetime import date

import torch

from sact_det.benchmark import (
    machine_description, markdown_table, profile_point, rows_as_dicts, run_benchmark)
from sact_det.cli import (check_output_file, image_size, load_config, non_negative_int, positive_float,
                          positive_int, report_input_errors)
from sact_det.files import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "sact_faster_rcnn.yaml"))
    parser.add_argument("--weights", default="", help="trained weights (default: random, seeded)")
    parser.add_argument("--sizes", nargs="+", type=image_size, default=[(600, 800)], help="HxW of the input image")
    parser.add_argument("--points", nargs="+", default=["100", "75", "56", "40", "25"],
                        help="FLOPs in %% of dense to calibrate the halting biases to, or 'trained'")
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
    parser.add_argument("--profile", type=positive_float, metavar="PCT",
                        help="instead of the table: per-block latency and profiler table at PCT %% FLOPs "
                             "(float32, first size, first execution other than dense)")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table at the end")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_output_file(parser, "--json", args.json)  # before the run, not after it
    cfg = load_config(parser, args.config_file,
                      ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", args.weights, *args.opts])
    if args.threads:
        torch.set_num_threads(args.threads)
    points = [None] if args.points == ["trained"] else [float(p) for p in args.points]
    dtype = torch.float16 if args.half else torch.bfloat16 if args.bf16 else torch.float32
    print(f"# {date.today()} | torch {torch.__version__} | {machine_description(torch.device(args.device))} | "
          f"{dtype} | config {os.path.relpath(args.config_file, ROOT)}")
    if args.profile is not None:
        execution = next((e for e in args.executions if e != "dense"), "dense")
        print(profile_point(cfg, *args.sizes[0], args.profile, execution))
        return
    try:
        with report_input_errors(parser):
            rows = run_benchmark(cfg, args.sizes, points, args.executions, args.tile_size, args.warmup,
                                 args.repeats, dtype=dtype, detector=args.detector)
    except ValueError as e:  # a combination of options that cannot run: say which
        parser.error(str(e))
    if args.json:
        with atomic_write(args.json) as f:
            json.dump({"args": vars(args), "rows": rows_as_dicts(rows)}, f, indent=1)
    if args.markdown:
        print(markdown_table(rows))


if __name__ == "__main__":
    main()
