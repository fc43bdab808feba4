"""SACT evaluator: feature-extractor FLOPs, ponder cost and units over a dataset.

Reported in the paper's formats: FLOPs mean +- std, absolute and as a
percentage of the dense reference ResNet at the same image sizes (Table 1),
and ponder cost and mean units per block with their std across images
(supplement, Table 3). With ground-truth objects, also the object agreement:
the ROC AUC of the total ponder map and of each block's as a predictor of
object pixels (masks when the annotations have them, else boxes), and each
block's mean ponder cost and mean units evaluated on objects and on background,
averaged over images, overall and per background type where the dataset's
images record one (the synthetic dataset's ``"background"`` field), and per
kind of object where its annotations record one (the synthetic dataset's
``"style"``: e.g. plain against finely textured objects on
``synthetic_val_texture``). Printed as tables, returned to Detectron2 (so it is logged with the COCO metrics, e.g. to
``metrics.json`` when evaluating during training) and written as JSON with the
per-image records.
"""
import itertools
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from tabulate import tabulate

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from sact_det.evaluation.metrics import object_agreement, object_mask

__all__ = ["SACTEvaluator", "summarize_records", "format_summary", "flat_metrics", "gather_records", "write_report",
           "REPORT_FILE"]

REPORT_FILE = "sact_report.json"
logger = logging.getLogger("sact_det")


def _stats(values) -> Dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}


def _value_at(record: dict, path: Sequence[str]):
    """``record[path[0]][path[1]]...``, None where any of it is absent or None."""
    for key in path:
        if record is None:
            return None
        record = record.get(key)
    return record


def _mean_of(records: List[dict], *path: str):
    """Stats of a per-image value (at ``path`` in each record: a key, then e.g.
    a block) over the records that have it."""
    values = [value for value in (_value_at(r, path) for r in records) if value is not None]
    return dict(_stats(values), images=len(values)) if values else None


def _agreement(records: List[dict], blocks: List[str]) -> dict:
    per_block_keys = ("ponder_on_objects", "ponder_on_background", "units_on_objects", "units_on_background")
    return dict({"object_auc": _mean_of(records, "object_auc"),
                 "per_block": {b: _mean_of(records, "object_auc_per_block", b) for b in blocks}},
                **{key: {b: _mean_of(records, key, b) for b in blocks} for key in per_block_keys})


def _per_style(records: List[dict], blocks: List[str]) -> dict:
    """Per kind of object (annotation style) and block, the mean ponder cost and units on its cells."""
    styles = sorted({style for r in records for style in r.get("units_on_style") or {}})
    return {style: {name: {b: _mean_of(records, f"{name}_on_style", style, b) for b in blocks}
                    for name in ("ponder", "units")} for style in styles}


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
    if records[0].get("detector_flops") is not None:
        for key in ("rpn_flops", "box_head_flops", "num_proposals", "detector_flops", "detector_dense_flops",
                    "detector_flops_pct"):
            summary[key] = _stats([r[key] for r in records])
        with_head = [r for r in records if r.get("head_units") is not None]  # an ACT head, proposals
        if with_head:
            summary["head_units"] = _stats([r["head_units"] for r in with_head])
            shares = np.array([r["head_halting_shares"] for r in with_head], dtype=np.float64)
            weights = np.array([r["num_proposals"] for r in with_head], dtype=np.float64)[:, None]
            summary["head_halting_shares"] = (shares * weights).sum(0) / max(weights.sum(), 1)
            summary["head_halting_shares"] = summary["head_halting_shares"].tolist()
    if records[0]["ponder_cost"] is not None:
        summary["ponder_cost"] = _stats([r["ponder_cost"] for r in records])
        summary["ponder_cost_per_block"] = {
            b: _stats([r["ponder_cost_per_block"][b] for r in records]) for b in blocks}
        # mean over the images whose map has an interior (sact_det.modeling.maps.border_ratio)
        summary["border_ratio_per_block"] = {b: _mean_of(records, "border_ratio_per_block", b) for b in blocks}
    if any(r.get("object_auc") is not None for r in records):
        summary["object_auc"] = _mean_of(records, "object_auc")
        summary["agreement"] = {"all": _agreement(records, blocks)}
        for background in sorted({r["background"] for r in records if r.get("background")}):
            summary["agreement"][background] = _agreement(
                [r for r in records if r.get("background") == background], blocks)
        summary["per_style"] = _per_style(records, blocks)
    return summary


def format_summary(summary: dict, network: str = "Feature extractor", extra_parts: str = "") -> str:
    """The summary as tables (Table 1 and Table 3 formats, then object agreement);
    the title names ``network`` and its parts: the stem, the blocks, ``extra_parts``."""
    def pm(s, fmt):
        return f"{s['mean']:{fmt}} ± {s['std']:{fmt}}" if s else "-"

    blocks = list(summary["units_per_block"])
    flops_table = tabulate(
        [[summary["num_images"], pm(summary["flops"], ".3e"), pm(summary["flops_pct"], ".1f"),
          f"{summary['dense_flops']['mean']:.3e}"]],
        headers=["images", "FLOPs", "% of dense", "dense FLOPs"], tablefmt="pipe")
    rows = [["units"] + [pm(summary["units_per_block"][b], ".2f") for b in blocks] + [""]]
    if "ponder_cost" in summary:
        rows.append(["ponder cost"] + [pm(summary["ponder_cost_per_block"][b], ".2f") for b in blocks]
                    + [pm(summary["ponder_cost"], ".2f")])
        rows.append(["border ratio"] + [pm(summary["border_ratio_per_block"].get(b), ".2f") for b in blocks] + [""])
    block_table = tabulate(rows, headers=[""] + blocks + ["total"], tablefmt="pipe")
    text = f"{network} (stem + {', '.join(blocks)}{extra_parts}):\n{flops_table}\n{block_table}"
    if "ponder_cost" in summary:
        text += "\n(border ratio: mean ponder cost on the outermost ring of cells / on the interior)"
    if "detector_flops" in summary:
        row = [pm(summary["flops"], ".3e"), pm(summary["rpn_flops"], ".3e"), pm(summary["box_head_flops"], ".3e"),
               f"{summary['num_proposals']['mean']:.0f}", pm(summary["detector_flops"], ".3e"),
               pm(summary["detector_flops_pct"], ".1f")]
        headers = ["feature extractor", "RPN", "box head", "proposals", "detector", "% of dense detector"]
        if "head_units" in summary:
            row.append(pm(summary["head_units"], ".2f") + " (halting after each unit: "
                       + ", ".join(f"{100 * s:.0f}%" for s in summary["head_halting_shares"]) + ")")
            headers.append("box head units per proposal")
        text += "\nWhole detector (FLOPs per image):\n" + tabulate([row], headers=headers, tablefmt="pipe")
    if "agreement" in summary:
        text += "\n" + _format_agreement(summary, blocks)
    return text


def _format_agreement(summary: dict, blocks: List[str]) -> str:
    """The object agreement per group of images, and where the units went: on
    object, background and each kind of object's cells."""
    def mean(stats):
        return f"{stats['mean']:.2f}" if stats else "-"

    def images(per_block):  # images with such cells in at least one block
        return max((stats["images"] for stats in per_block.values() if stats), default=0)

    rows = []
    for group, agreement in summary["agreement"].items():
        images_in_group = agreement["object_auc"]["images"] if agreement["object_auc"] else 0
        rows.append([group, images_in_group, mean(agreement["object_auc"])]
                    + [f"{mean(agreement['per_block'][b])} ({mean(agreement['ponder_on_objects'][b])}"
                       f" / {mean(agreement['ponder_on_background'][b])})" for b in blocks])
    text = ("Object agreement: ROC AUC of the ponder map for object pixels (0.5: none, 1: all "
            "computation on objects);\nper block also (mean ponder cost on objects / on background):\n"
            + tabulate(rows, headers=["images", "n", "total map"] + blocks, tablefmt="pipe"))
    overall = summary["agreement"]["all"]
    kinds = [("objects", overall["units_on_objects"], overall["ponder_on_objects"]),
             ("background", overall["units_on_background"], overall["ponder_on_background"])]
    kinds += [(f"{style} objects", values["units"], values["ponder"]) for style, values in summary["per_style"].items()]
    rows = [[cells, images(units), *(f"{mean(units[b])} ({mean(ponder[b])})" for b in blocks)]
            for cells, units, ponder in kinds]
    return (text + "\nWhere the units went: per block, mean units evaluated (mean ponder cost) on the cells\n"
            "of objects, of background and of each kind of object (the annotations' style):\n"
            + tabulate(rows, headers=["cells", "images"] + blocks, tablefmt="pipe"))


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
        for block, stats in summary["border_ratio_per_block"].items():
            if stats:
                metrics[f"border_ratio_{block}"] = stats["mean"]
    if "detector_flops" in summary:
        metrics["detector_FLOPs"] = summary["detector_flops"]["mean"]
        metrics["detector_FLOPs_pct"] = summary["detector_flops_pct"]["mean"]
        if "head_units" in summary:
            metrics["head_units"] = summary["head_units"]["mean"]
    if "agreement" in summary:
        metrics["object_AUC"] = summary["object_auc"]["mean"]
        overall = summary["agreement"]["all"]
        per_block = {"object_AUC": overall["per_block"],
                     **{key: overall[key] for key in ("units_on_objects", "units_on_background",
                                                      "ponder_on_objects", "ponder_on_background")},
                     **{f"units_on_style_{style}": values["units"] for style, values in summary["per_style"].items()}}
        for name, values in per_block.items():
            for block, stats in values.items():
                if stats:
                    metrics[f"{name}_{block}"] = stats["mean"]
    return metrics


def _image_field(dataset_name: str, field: str) -> Dict:
    """``image id -> images[i][field]`` from a COCO-format dataset's json, where
    present (Detectron2's loader keeps only the standard image fields)."""
    json_file = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
    if not json_file or not PathManager.exists(json_file):
        return {}
    with PathManager.open(json_file) as f:
        images = json.load(f).get("images", [])
    return {image["id"]: image[field] for image in images if field in image}


class SACTEvaluator(DatasetEvaluator):
    """Collects the ``"sact"`` output of :class:`~sact_det.modeling.meta_arch.SACTRCNN` per image;
    ``log_summary``: log the summary tables when evaluating."""

    def __init__(self, dataset_name: str, output_dir: str = None, distributed: bool = True,
                 log_summary: bool = True):
        self._dataset_name = dataset_name
        self._log_summary = log_summary
        self._output_dir = output_dir
        self._distributed = distributed
        self._records: List[dict] = []
        self._ground_truth: Optional[Dict] = None
        self._backgrounds: Dict = {}

    def reset(self):
        self._records = []

    def _ground_truth_of(self, image_id) -> Optional[dict]:
        if self._ground_truth is None:
            self._ground_truth = {d["image_id"]: d for d in DatasetCatalog.get(self._dataset_name)}
            self._backgrounds = _image_field(self._dataset_name, "background")
        return self._ground_truth.get(image_id)

    def _objects_by_style(self, record) -> Dict[Optional[str], np.ndarray]:
        """Bool object pixels of an image of the dataset per annotation ``"style"``
        (None: the objects without one); empty without objects."""
        by_style = defaultdict(list)
        for a in (record or {}).get("annotations") or ():
            box = BoxMode.convert(a["bbox"], a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYWH_ABS)
            by_style[a.get("style")].append(dict(a, bbox=box))
        return {style: object_mask(annotations, record["height"], record["width"])
                for style, annotations in by_style.items()}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            report = out.get("sact")
            if report is None:
                continue
            record = report.record()
            record.update(image_id=inp.get("image_id"), file_name=inp.get("file_name"),
                          num_detections=len(out["instances"]) if "instances" in out else None,
                          object_auc=None)
            if report.adaptive:
                by_style = self._objects_by_style(self._ground_truth_of(inp.get("image_id")))
                objects = np.logical_or.reduce(list(by_style.values())) if by_style else None
                if objects is not None and objects.any() and not objects.all():
                    styled = {style: pixels for style, pixels in by_style.items() if style is not None}
                    record.update(object_agreement(report, objects, styled))
                record["background"] = self._backgrounds.get(inp.get("image_id"))
            self._records.append(record)

    def evaluate(self):
        records = gather_records(self._records, self._distributed)
        if records is None:
            return {}
        if not records:
            logger.warning(f"[SACTEvaluator] no SACT outputs on {self._dataset_name}: "
                           "is MODEL.META_ARCHITECTURE SACTRCNN?")
            return {}
        summary = summarize_records(records)
        if self._log_summary:
            logger.info(f"SACT evaluation on {self._dataset_name}:\n" + format_summary(summary))
        write_report(self._output_dir, self._dataset_name, summary, records)
        return {"sact": flat_metrics(summary)}


def gather_records(records: List[dict], distributed: bool) -> Optional[List[dict]]:
    """Every process's records on the main process; None on the others."""
    if not distributed:
        return records
    comm.synchronize()
    records = list(itertools.chain(*comm.gather(records, dst=0)))
    return records if comm.is_main_process() else None


def write_report(output_dir: Optional[str], dataset_name: str, summary: dict, records: List[dict]) -> None:
    """``output_dir/sact_report.json``: the summary and every image's record (nothing without ``output_dir``)."""
    if not output_dir:
        return
    PathManager.mkdirs(output_dir)
    path = os.path.join(output_dir, REPORT_FILE)
    with PathManager.open(path, "w") as f:
        json.dump({"dataset": dataset_name, "summary": summary, "images": records}, f)
    logger.info(f"SACT report written to {path}")
