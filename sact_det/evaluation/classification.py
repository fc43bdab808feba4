"""Classification evaluator: top-1 and top-5 accuracy next to the SACT report
(paper Table 3, Fig. 7: accuracy against FLOPs).

Collects the output of :class:`~sact_det.modeling.classifier.SACTClassifier`
(``"scores"`` and ``"sact"`` per image): top-1 / top-5 accuracy, and the
classifier's FLOPs (stem + res2-res5 + linear layer) mean +- std, absolute and
as % of the dense reference, ponder cost, units and border ratio per block,
summarised and printed as the detector's report
(:mod:`sact_det.evaluation.evaluator`) and written to ``sact_report.json`` with
every image's record (its label, top-5 classes and whether it was right).
"""
import logging
from typing import List

import torch
from tabulate import tabulate

from detectron2.evaluation import DatasetEvaluator

from sact_det.evaluation.evaluator import flat_metrics, format_summary, gather_records, summarize_records, write_report

__all__ = ["ClassificationEvaluator", "TOP_K"]

logger = logging.getLogger("sact_det")
TOP_K = 5


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 / top-5 accuracy and the SACT report of a classifier on a dataset
    whose inputs carry ``"label"``. With fewer than five classes, top-5 counts
    every class (and is 100 %)."""

    def __init__(self, dataset_name: str, output_dir: str = None, distributed: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._records: List[dict] = []

    def reset(self):
        self._records = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            scores = out["scores"].detach().float().cpu()
            top = torch.topk(scores, min(TOP_K, scores.numel())).indices.tolist()
            label = int(inp["label"])
            record = out["sact"].record()
            record.update(image_id=inp.get("image_id"), file_name=inp.get("file_name"), label=label,
                          top5=top, correct_top1=top[0] == label, correct_top5=label in top)
            self._records.append(record)

    def evaluate(self):
        records = gather_records(self._records, self._distributed)
        if not records:
            if records is not None:
                logger.warning(f"[ClassificationEvaluator] no outputs on {self._dataset_name}")
            return {}
        summary = summarize_records(records)
        summary["top1"] = 100.0 * sum(r["correct_top1"] for r in records) / len(records)
        summary["top5"] = 100.0 * sum(r["correct_top5"] for r in records) / len(records)
        accuracy = tabulate([[len(records), f"{summary['top1']:.2f}", f"{summary['top5']:.2f}"]],
                            headers=["images", "top-1 %", "top-5 %"], tablefmt="pipe")
        logger.info(f"Classification on {self._dataset_name}:\n{accuracy}\n"
                    + format_summary(summary, network="Classifier", extra_parts=" + linear layer"))
        write_report(self._output_dir, self._dataset_name, summary, records)
        return {"classification": {"top1": summary["top1"], "top5": summary["top5"]}, "sact": flat_metrics(summary)}
