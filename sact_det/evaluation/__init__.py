"""Evaluation: the SACT report evaluator beside COCO's (:mod:`.evaluator`),
map metrics such as object agreement and AUC-Judd (:mod:`.metrics`), and the
CAT2000 saliency protocol of section 4.3 (:mod:`.saliency`)."""
from sact_det.evaluation.evaluator import REPORT_FILE, SACTEvaluator

__all__ = ["REPORT_FILE", "SACTEvaluator"]
