#!/usr/bin/env python
"""Writes the synthetic COCO-format dataset (JPEG images + instances_{train,val}.json).

    python tools/make_synthetic_coco.py                      # datasets/synthetic_coco
    python tools/make_synthetic_coco.py --output /data/syn --num-train 2000 --seed 1

Registered with Detectron2 as synthetic_train / synthetic_val when it lives at
$DETECTRON2_DATASETS/synthetic_coco (default: datasets/synthetic_coco).
"""
import argparse

from sact_det.data import default_synthetic_root, generate_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=default_synthetic_root(), help="dataset root")
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = generate_dataset(args.output, args.num_train, args.num_val, args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
