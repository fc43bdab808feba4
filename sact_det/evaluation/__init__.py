"""Evaluation: the SACT report evaluator beside COCO's (:mod:`.evaluator`), the
classifier's top-1/top-5 evaluator with the same report (:mod:`.classification`),
map metrics such as object agreement and AUC-Judd (:mod:`.metrics`), and the
CAT2000 saliency protocol of section 4.3 (:mod:`.saliency`)."""
from sact_det.evaluation.classification import ClassificationEvaluator
from sact_det.evaluation.evaluator import REPORT_FILE, SACTEvaluator

__all__ = ["ClassificationEvaluator", "REPORT_FILE", "SACTEvaluator"]
