"""The CPU demo: synthetic data -> fine-tune a small SACT detector from the
shipped SACT classifier (the paper's two stages, sec. 4.2) -> COCO AP and FLOPs
report -> ponder cost overlays. ``tools/train_demo.py`` / ``make demo`` run it;
:func:`pretrain_classifier` trains the shipped classifier again.

Re-running continues an interrupted training from its last checkpoint (the
demo trains with ``--resume``) and re-evaluates a finished one.
"""
import glob
import os
import re
import time

from detectron2.engine import default_argument_parser

from sact_det.apps.visualization import visualize_files
from sact_det.config import fall_back_to_cpu, get_config_file, get_sact_cfg
from sact_det.config.model_zoo import WEIGHTS_ROOT
from sact_det.data import default_synthetic_root, ensure_synthetic
from sact_det.data.classification import ensure_synthetic_cls
from sact_det.data.synthetic import split_paths
from sact_det.engine.checkpoint import save_weights_only
from sact_det.engine.predictor import SACTPredictor
from sact_det.engine.train_net import main as train_and_evaluate

__all__ = ["DEMO_CONFIG", "DEMO_OUTPUT_DIR", "PRETRAIN_CONFIG", "SHIPPED_CLASSIFIER", "run_training_demo",
           "dataset_summary", "pretrain_classifier"]

# MODEL.WEIGHTS: the shipped classifier; synthetic/sact_tiny.yaml is the same detector from random weights
DEMO_CONFIG = get_config_file("synthetic/sact_tiny_from_cls.yaml")
PRETRAIN_CONFIG = get_config_file("synthetic/cls_sact_tiny_res5x1.yaml")
SHIPPED_CLASSIFIER = os.path.join(WEIGHTS_ROOT, "synthetic_cls_sact_tiny.pth")
DEMO_OUTPUT_DIR = "output/demo"


def run_training_demo(output_dir: str = DEMO_OUTPUT_DIR, config_file: str = DEMO_CONFIG,
                      num_overlays: int = 6, opts=()) -> dict:
    """Runs the demo and returns Detectron2's evaluation results."""
    start = time.time()
    ensure_synthetic()
    args = default_argument_parser().parse_args(
        ["--config-file", config_file, "--resume", "OUTPUT_DIR", output_dir, *opts])
    results = train_and_evaluate(args)

    cfg = get_sact_cfg(config_file, ["OUTPUT_DIR", output_dir, *opts,
                                     "MODEL.WEIGHTS", os.path.join(output_dir, "model_final.pth")])
    fall_back_to_cpu(cfg)
    images = []  # half from synthetic_val, half from the held-out split
    for split, count in (("val", num_overlays - num_overlays // 2), ("val_heldout", num_overlays // 2)):
        images += sorted(glob.glob(os.path.join(split_paths(default_synthetic_root(), split)[1], "*.jpg")))[:count]
    overlay_dir = os.path.join(output_dir, "ponder")
    visualize_files(SACTPredictor(cfg), images, overlay_dir, progress=False)

    minutes = (time.time() - start) / 60
    print("\n" + "=" * 72)
    print(f"sact-det demo finished in {minutes:.1f} min ({output_dir})")
    for dataset, result in _per_dataset(results, cfg).items():
        print(dataset_summary(dataset, result, output_dir))
    print(f"ponder overlays: {overlay_dir}/*_ponder.png")
    print(f"your own images: python tools/demo.py --config-file {os.path.relpath(config_file)} "
          f"--input IMAGE ... --output DIR MODEL.WEIGHTS {os.path.join(output_dir, 'model_final.pth')}")
    print("=" * 72)
    return results


def pretrain_classifier(output: str = SHIPPED_CLASSIFIER, config_file: str = PRETRAIN_CONFIG, opts=(),
                        output_dir: str = None) -> str:
    """The demo's first stage: trains the tiny SACT classifier on the synthetic
    classification set in ``output_dir`` (default: the config's OUTPUT_DIR;
    resuming an interrupted run there), evaluates it, and writes its weights to
    ``output`` (by default the file the demo starts from); returns the file's
    SHA-256."""
    start = time.time()
    ensure_synthetic_cls()
    opts = [*opts, "OUTPUT_DIR", output_dir] if output_dir else list(opts)
    args = default_argument_parser().parse_args(["--config-file", config_file, "--resume", *opts])
    train_and_evaluate(args)
    cfg = get_sact_cfg(config_file, opts)
    digest = save_weights_only(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), output)
    print(f"\nclassifier trained in {(time.time() - start) / 60:.1f} min; weights: {output} "
          f"({os.path.getsize(output) / 2**20:.1f} MiB, sha256 {digest})")
    return digest


def dataset_summary(dataset: str, result: dict, output_dir: str) -> str:
    """The demo's lines for one evaluated dataset (Detectron2's ``{"bbox": ..., "sact": ...}``):
    box AP, FLOPs, units per block, and where the units went, from whichever keys are there."""
    bbox, sact = result.get("bbox", {}), result.get("sact", {})
    nan = float("nan")
    blocks = [k[len("units_"):] for k in sact if re.fullmatch(r"units_res[0-9]", k)]

    def per_block(name: str) -> list:
        return [sact.get(f"{name}_{b}", nan) for b in blocks]
    lines = [f"{dataset}: box AP {bbox.get('AP', nan):.1f}  AP50 {bbox.get('AP50', nan):.1f} (COCO protocol)",
             f"  feature extractor FLOPs {sact.get('FLOPs', nan):.3e} = "
             f"{sact.get('FLOPs_pct', nan):.1f}% ± {sact.get('FLOPs_pct_std', nan):.1f} of dense; "
             f"ponder cost {sact.get('ponder_cost', nan):.2f}",
             "  units per block " + ", ".join(f"{b} {u:.2f}" for b, u in zip(blocks, per_block("units")))]
    if blocks and f"border_ratio_{blocks[0]}" in sact:
        lines.append("  border ratio (ponder cost on the outermost ring of cells / the interior) " + ", ".join(
            f"{b} {r:.2f}" for b, r in zip(blocks, per_block("border_ratio"))))
    if blocks and f"units_on_objects_{blocks[0]}" in sact:
        lines.append("  units on objects / on background " + ", ".join(
            f"{b} {o:.2f} / {g:.2f}" for b, o, g in zip(blocks, per_block("units_on_objects"),
                                                        per_block("units_on_background"))))
    lines += ["  object agreement (ROC AUC of the ponder map for object pixels; 0.5 = none) "
              f"{sact.get('object_AUC', nan):.3f}; per block " + ", ".join(
                  f"{k[len('object_AUC_'):]} {v:.3f}" for k, v in sact.items() if k.startswith("object_AUC_")),
              f"  report: {os.path.join(output_dir, 'inference', dataset, 'sact_report.json')}"]
    return "\n".join(lines)


def _per_dataset(results: dict, cfg) -> dict:
    """Detectron2 returns one dataset's results flat, several keyed by dataset name."""
    if len(cfg.DATASETS.TEST) == 1:
        return {cfg.DATASETS.TEST[0]: results}
    return {name: results.get(name, {}) for name in cfg.DATASETS.TEST}
