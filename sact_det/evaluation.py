"""SACT evaluator: feature-extractor FLOPs, ponder cost and units over a dataset.

Reported in the paper's formats: FLOPs mean +- std, absolute and as a
percentage of the dense reference ResNet at the same image sizes (Table 1),
and ponder cost and mean units per block with their std across images
(supplement, Table 3). With ground-truth objects, also the object agreement:
the ROC AUC of the total ponder map as a predictor of object pixels (masks
when the annotations have them, else boxes), averaged over images. Printed as
a table, returned to Detectron2 (so it is logged with the COCO metrics, e.g. to
``metrics.json`` when evaluating during training) and written as JSON with the
per-image records.
"""
import itertools
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
from tabulate import tabulate

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from .metrics import object_auc, object_mask

__all__ = ["SACTEvaluator", "summarize_records", "format_summary", "REPORT_FILE"]

REPORT_FILE = "sact_report.json"
logger = logging.getLogger("sact_det")


def _stats(values) -> Dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}


def summarize_records(records: List[dict]) -> dict:
    """Mean and std across images of the per-image SACT records."""
    blocks = list(records[0]["units_per_block"])
    summary = {
        "num_images": len(records),
        "flops": _stats([r["flops"] for r in records]),
        "flops_pct": _stats([r["flops_pct"] for r in records]),
        "dense_flops": _stats([r["dense_flops"] for r in records]),
        "units_per_block": {b: _stats([r["units_per_block"][b] for r in records]) for b in blocks},
    }
    if records[0]["ponder_cost"] is not None:
        summary["ponder_cost"] = _stats([r["ponder_cost"] for r in records])
        summary["ponder_cost_per_block"] = {
            b: _stats([r["ponder_cost_per_block"][b] for r in records]) for b in blocks}
    object_aucs = [r["object_auc"] for r in records if r.get("object_auc") is not None]
    if object_aucs:
        summary["object_auc"] = dict(_stats(object_aucs), images=len(object_aucs))
    return summary


def format_summary(summary: dict) -> str:
    """The summary as two tables (Table 1 and Table 3 formats)."""
    def pm(s, fmt):
        return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}"

    blocks = list(summary["units_per_block"])
    flops_table = tabulate(
        [[summary["num_images"], pm(summary["flops"], ".3e"), pm(summary["flops_pct"], ".1f"),
          f"{summary['dense_flops']['mean']:.3e}"]],
        headers=["images", "FLOPs", "% of dense", "dense FLOPs"], tablefmt="pipe")
    rows = [["units"] + [pm(summary["units_per_block"][b], ".2f") for b in blocks] + [""]]
    if "ponder_cost" in summary:
        rows.append(["ponder cost"] + [pm(summary["ponder_cost_per_block"][b], ".2f") for b in blocks]
                    + [pm(summary["ponder_cost"], ".2f")])
    block_table = tabulate(rows, headers=[""] + blocks + ["total"], tablefmt="pipe")
    text = f"Feature extractor (stem + {', '.join(blocks)}):\n{flops_table}\n{block_table}"
    if "object_auc" in summary:
        text += (f"\nObject agreement (ROC AUC of the ponder map for object pixels, "
                 f"{summary['object_auc']['images']} images): {pm(summary['object_auc'], '.3f')}")
    return text


def flat_metrics(summary: dict) -> Dict[str, float]:
    """Scalars for Detectron2's result dict / event storage."""
    metrics = {
        "FLOPs": summary["flops"]["mean"], "FLOPs_std": summary["flops"]["std"],
        "FLOPs_pct": summary["flops_pct"]["mean"], "FLOPs_pct_std": summary["flops_pct"]["std"],
    }
    for block, stats in summary["units_per_block"].items():
        metrics[f"units_{block}"] = stats["mean"]
    if "ponder_cost" in summary:
        metrics["ponder_cost"] = summary["ponder_cost"]["mean"]
        for block, stats in summary["ponder_cost_per_block"].items():
            metrics[f"ponder_cost_{block}"] = stats["mean"]
    if "object_auc" in summary:
        metrics["object_AUC"] = summary["object_auc"]["mean"]
    return metrics


class SACTEvaluator(DatasetEvaluator):
    """Collects the ``"sact"`` output of :class:`~sact_det.meta_arch.SACTRCNN` per image."""

    def __init__(self, dataset_name: str, output_dir: str = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._records: List[dict] = []
        self._ground_truth: Optional[Dict] = None

    def reset(self):
        self._records = []

    def _objects(self, image_id) -> Optional[np.ndarray]:
        """Bool object pixels of an image of the dataset, None without objects."""
        if self._ground_truth is None:
            self._ground_truth = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}
        record = self._ground_truth.get(image_id)
        if record is None or not record.get("annotations"):
            return None
        annotations = [dict(a, bbox=BoxMode.convert(a["bbox"], a.get("bbox_mode", BoxMode.XYWH_ABS),
                                                    BoxMode.XYWH_ABS)) for a in record["annotations"]]
        return object_mask(annotations, record["height"], record["width"])

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            report = out.get("sact")
            if report is None:
                continue
            record = report.record()
            record.update(image_id=inp.get("image_id"), file_name=inp.get("file_name"),
                          num_detections=len(out["instances"]) if "instances" in out else None,
                          object_auc=None)
            objects = self._objects(inp.get("image_id")) if report.adaptive else None
            if objects is not None and objects.any() and not objects.all():
                record["object_auc"] = object_auc(report.ponder_map, objects, report.image_size,
                                                  report.ponder_map_stride)
            self._records.append(record)

    def evaluate(self):
        records = self._records
        if self._distributed:
            comm.synchronize()
            records = list(itertools.chain(*comm.gather(records, dst=0)))
            if not comm.is_main_process():
                return {}
        if not records:
            logger.warning(f"[SACTEvaluator] no SACT outputs on {self._dataset_name}: "
                           "is MODEL.META_ARCHITECTURE SACTRCNN?")
            return {}
        summary = summarize_records(records)
        logger.info(f"SACT evaluation on {self._dataset_name}:\n" + format_summary(summary))
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, REPORT_FILE)
            with PathManager.open(path, "w") as f:
                json.dump({"dataset": self._dataset_name, "summary": summary, "images": records}, f)
            logger.info(f"SACT report written to {path}")
        return {"sact": flat_metrics(summary)}
