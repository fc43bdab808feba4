#!/usr/bin/env python
"""Train or evaluate a SACT Faster R-CNN (Detectron2 conventions).

    python tools/train_net.py --config-file configs/sact_faster_rcnn.yaml --num-gpus 8
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config-file CFG --resume          # continue in OUTPUT_DIR
"""
from sact_det.engine.train_net import command_line

if __name__ == "__main__":
    command_line()  # exits with the run's status
