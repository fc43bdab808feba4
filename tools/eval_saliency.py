#!/usr/bin/env python
r"""Ponder cost maps as a saliency model on CAT2000 (paper section 4.3, supplement A.3).

    python tools/eval_saliency.py --config-file configs/sact_faster_rcnn.yaml \
        --cat2000 /data/CAT2000/trainSet --output saliency_out \
        MODEL.WEIGHTS model_final.pth

Layout: <root>/Stimuli/<category>/*.jpg with fixation locations in
<root>/FIXATIONLOCS/<category>/<name>.mat (or binary maps in FIXATIONMAPS/).
Stimuli are resized to --size (640x360 for the COCO model), s and gamma of the
post-processing are chosen by grid search on the first half of each category's
images, AUC-Judd is reported on the second half, per category and overall, with
the centre baseline alone. Writes saliency.json, saliency.csv and a few figures
like the paper's Fig. 11. Images with missing or unusable fixations are listed
and skipped.
"""
import csv
import json
import os
import sys

import matplotlib.pyplot as plt
from tqdm import tqdm

from detectron2.utils.logger import setup_logger

from sact_det.engine.defaults import load_config
from sact_det.engine.predictor import SACTPredictor
from sact_det.evaluation.saliency import evaluate_cat2000, index_cat2000, saliency_figure
from sact_det.utils.cli import (ToolParser, add_config_arguments, non_negative_float, non_negative_int, output_dir,
                                positive_int, run_tool)
from sact_det.utils.files import atomic_path


def build_parser():
    parser = ToolParser(__doc__)
    parser.add_argument("--cat2000", required=True, help="directory with Stimuli/ and FIXATIONLOCS/ or FIXATIONMAPS/")
    parser.add_argument("--output", required=True, type=output_dir, metavar="DIR")
    parser.add_argument("--size", type=positive_int, nargs=2, default=[640, 360], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--sigmas", type=non_negative_float, nargs="+", default=[0, 2, 5, 10, 15, 20],
                        help="blur stds searched, in pixels at --size")
    parser.add_argument("--gammas", type=non_negative_float, nargs="+", default=[0, 0.005, 0.05, 0.2, 0.5, 1.0],
                        help="centre-baseline weights searched")
    parser.add_argument("--figures", type=non_negative_int, default=4, help="number of Fig. 11-style figures")
    add_config_arguments(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        index_cat2000(args.cat2000)
    except FileNotFoundError as e:
        parser.error(f"argument --cat2000: {e}")
    cfg = load_config(args.config_file, args.opts, parser)
    setup_logger(name="sact_det")
    return run_tool(lambda: evaluate(cfg, args), parser.prog)


def evaluate(cfg, args) -> int:
    predictor = SACTPredictor(cfg)

    def ponder(rgb):  # the predictor takes BGR, as Detectron2's DefaultPredictor does
        return predictor.ponder_output(rgb[:, :, ::-1], resize=False)["sact"].ponder_map.numpy()

    result = evaluate_cat2000(ponder, args.cat2000, tuple(args.size), args.sigmas, args.gammas, progress=tqdm)
    os.makedirs(args.output, exist_ok=True)
    report = {"sigma": result.sigma, "gamma": result.gamma, "tuning_auc_judd": result.tuning_auc,
              "overall": result.overall, "categories": result.categories,
              "skipped": [{"stimulus": s, "reason": r} for s, r in result.skipped], "images": result.images}
    with atomic_path(os.path.join(args.output, "saliency.json")) as temporary, open(temporary, "w") as f:
        json.dump(report, f, indent=1)
    with atomic_path(os.path.join(args.output, "saliency.csv")) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["category", "stimulus", "fixations", "auc_judd", "center_auc_judd"])
        writer.writeheader()
        writer.writerows(result.images)
    for index, image in enumerate(result.images[: args.figures]):
        fig = saliency_figure(image["stimulus"], image["fixations"], ponder, tuple(args.size),
                              result.sigma, result.gamma)
        with atomic_path(os.path.join(args.output, f"fig11_{index:02d}.png")) as temporary:
            fig.savefig(temporary)
        plt.close(fig)
    print(f"s = {result.sigma:g}, gamma = {result.gamma:g} (tuning AUC-Judd {result.tuning_auc:.4f})")
    print(f"{'category':<20} {'images':>6} {'SACT':>8} {'centre':>8}")
    for category, row in result.categories.items():
        print(f"{category:<20} {row['images']:>6} {row['auc_judd']:>8.4f} {row['center_auc_judd']:>8.4f}")
    print(f"{'overall':<20} {result.overall['images']:>6} {result.overall['auc_judd']:>8.4f} "
          f"{result.overall['center_auc_judd']:>8.4f}")
    for stimulus, reason in result.skipped:
        print(f"  SKIPPED {stimulus}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
