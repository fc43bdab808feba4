#!/usr/bin/env python
r"""The GPU check of sact-det (correctness, feature-extractor and detector latency,
training), in priority order within a time budget; see sact_det/apps/gpu_check.py.

    python tools/gpu_check.py --out gpu_out                        # on a GPU machine
    python tools/gpu_check.py --out /tmp/dry --device cpu --sizes 96x128 --repeats 1 --train-size 128 \
        --train-iterations 2                                         # a dry run on a CPU
"""
import sys

import torch

from sact_det.apps.gpu_check import run_gpu_check
from sact_det.utils.cli import ToolParser, image_size, output_dir, positive_float, positive_int


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--out", required=True, type=output_dir, help="output directory (gpu_check.md, gpu_check.json)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=positive_float, default=270.0, help="seconds for all parts")
    parser.add_argument("--sizes", nargs="+", type=image_size, default=[(800, 1333), (600, 800)], metavar="HxW")
    parser.add_argument("--repeats", type=positive_int, default=20)
    parser.add_argument("--train-size", type=positive_int, default=600)
    parser.add_argument("--train-iterations", type=positive_int, default=20)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for a dry run)")
    report = run_gpu_check(args.out, args.device, args.budget, args.repeats, args.sizes,
                           train_size=args.train_size, train_iterations=args.train_iterations)
    print(open(f"{args.out}/gpu_check.md").read())
    return 0 if all(not r["lines"][0].startswith("FAILED") for r in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
