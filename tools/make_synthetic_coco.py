#!/usr/bin/env python
"""Writes the synthetic COCO-format dataset (JPEG images + instances_{train,val,val_heldout}.json).

    python tools/make_synthetic_coco.py                      # datasets/synthetic_coco
    python tools/make_synthetic_coco.py --output /data/syn --num-train 2000 --seed 1

Writes the dataset's files (annotations/instances_*.json, <split>/NNNNNN.jpg) at --output,
replacing those already there; other files are left alone. Commands that need the
dataset generate it only where none exists, and name this command when part of it is missing.

Registered with Detectron2 as synthetic_train / synthetic_val / synthetic_val_heldout
when it lives at $DETECTRON2_DATASETS/synthetic_coco (default: datasets/synthetic_coco,
see datasets/README.md).
"""
import sys

from sact_det.data import default_synthetic_root, generate_dataset
from sact_det.utils.cli import ToolParser, non_negative_int, output_dir, positive_int, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("--output", default=default_synthetic_root(), type=output_dir, metavar="DIR",
                        help="dataset root")
    parser.add_argument("--num-train", type=positive_int, default=800)
    parser.add_argument("--num-val", type=positive_int, default=100)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)

    def generate():
        paths = generate_dataset(args.output, args.num_train, args.num_val, args.seed)
        for split, path in paths.items():
            print(f"{split}: {path}")
    return run_tool(generate, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
