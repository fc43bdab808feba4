#!/usr/bin/env python
"""Train or evaluate a SACT Faster R-CNN (Detectron2 conventions).

    python tools/train_net.py --config-file configs/sact_faster_rcnn.yaml --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CFG --resume          # continue in OUTPUT_DIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.engine import default_argument_parser, launch  # noqa: E402

from sact_det.engine import main  # noqa: E402

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
