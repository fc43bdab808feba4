"""The CPU demo: synthetic data -> train a small SACT detector -> COCO AP and
FLOPs report -> ponder cost overlays. ``tools/demo.py`` / ``make demo`` run it.

Re-running continues an interrupted training from its last checkpoint (the
demo trains with ``--resume``) and re-evaluates a finished one.
"""
import glob
import os
import time

from detectron2.engine import default_argument_parser

from .config import fall_back_to_cpu, get_sact_cfg
from .data import default_synthetic_root, ensure_synthetic
from .data.synthetic import split_paths
from .engine import main as train_and_evaluate
from .predictor import SACTPredictor
from .visualization import visualize_files

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "synthetic", "sact_tiny.yaml")


def run_demo(output_dir: str = "output/demo", config_file: str = DEMO_CONFIG,
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
    images = sorted(glob.glob(os.path.join(split_paths(default_synthetic_root(), "val")[1], "*.jpg")))
    overlay_dir = os.path.join(output_dir, "ponder")
    visualize_files(SACTPredictor(cfg), images[:num_overlays], overlay_dir, progress=False)

    bbox, sact = results.get("bbox", {}), results.get("sact", {})
    minutes = (time.time() - start) / 60
    print("\n" + "=" * 72)
    print(f"sact-det demo finished in {minutes:.1f} min ({output_dir})")
    print(f"  box AP {bbox.get('AP', float('nan')):.1f}  AP50 {bbox.get('AP50', float('nan')):.1f}  "
          f"(COCO protocol, synthetic_val)")
    print(f"  feature extractor FLOPs {sact.get('FLOPs', float('nan')):.3e} = "
          f"{sact.get('FLOPs_pct', float('nan')):.1f}% ± {sact.get('FLOPs_pct_std', float('nan')):.1f} of dense")
    print(f"  ponder cost {sact.get('ponder_cost', float('nan')):.2f}; units per block " + ", ".join(
        f"{k[6:]} {v:.2f}" for k, v in sact.items() if k.startswith("units_")))
    print(f"  object agreement (ROC AUC of the ponder map for object pixels; 0.5 = none) "
          f"{sact.get('object_AUC', float('nan')):.3f}")
    print(f"  report: {os.path.join(output_dir, 'inference', 'synthetic_val', 'sact_report.json')}")
    print(f"  ponder overlays: {overlay_dir}/*_ponder.png")
    print("=" * 72)
    return results
