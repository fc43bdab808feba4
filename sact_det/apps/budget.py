"""A FLOPs budget at test time: the halting offset that meets it.

``MODEL.SACT.TEST_HALTING_OFFSET`` adds one number to every halting logit at
inference (:class:`~sact_det.modeling.sact.halting.HaltingBranch`): larger offsets halt
earlier. The mean feature-extractor FLOPs over a dataset decrease as the
offset grows (single images may not: a 3x3 convolution reads halted
neighbours), so the offset for a target is found by bisection, evaluating the
dataset (FLOPs and COCO AP) at each step.
"""
import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from tabulate import tabulate

from detectron2.evaluation import DatasetEvaluators, inference_on_dataset

from sact_det.modeling.sact.halting import set_test_halting_offset

__all__ = ["OffsetPoint", "BudgetError", "evaluate_offset", "find_offset_for_budget", "format_points"]

logger = logging.getLogger("sact_det")

# Offsets that reach (practically) every unit and the first unit only: sigmoid(-/+ 20) ~ 2e-9.
OFFSET_RANGE = (-20.0, 20.0)


class BudgetError(ValueError):
    pass


@dataclass
class OffsetPoint:
    offset: float
    flops_pct: float  # mean feature-extractor FLOPs, % of the dense reference
    ap: Optional[float]  # COCO box AP, None when not computed


def evaluate_offset(model, data_loader, evaluators: Callable[[], DatasetEvaluators], offset: float) -> OffsetPoint:
    """Runs ``model`` over ``data_loader`` with the test-time halting offset
    ``offset``; ``evaluators()`` builds fresh evaluators (a SACTEvaluator, and
    a COCOEvaluator for AP)."""
    set_test_halting_offset(model, offset)
    results = inference_on_dataset(model, data_loader, evaluators())
    ap = results.get("bbox", {}).get("AP")
    return OffsetPoint(offset, results["sact"]["FLOPs_pct"], ap)


def find_offset_for_budget(evaluate: Callable[[float], OffsetPoint], target_pct: float,
                           tolerance: float = 0.5, max_steps: int = 12) -> Tuple[OffsetPoint, List[OffsetPoint]]:
    """Bisection on the offset until the mean FLOPs are within ``tolerance``
    percentage points of ``target_pct``. Returns (the closest point, every
    point evaluated, in order).

    Raises:
        BudgetError: the target is outside what offsets can reach; the message
            gives the reachable range.
    """
    low, high = OFFSET_RANGE
    most, least = evaluate(low), evaluate(high)
    points = [most, least]
    if not least.flops_pct - tolerance <= target_pct <= most.flops_pct + tolerance:
        raise BudgetError(f"a budget of {target_pct:g}% FLOPs is out of reach: test-time halting offsets give "
                          f"{least.flops_pct:.1f}% (offset {high:g}, every block stops after its first unit) "
                          f"to {most.flops_pct:.1f}% (offset {low:g}, every unit) on this dataset")
    for _ in range(max_steps):
        best = min(points, key=lambda p: abs(p.flops_pct - target_pct))
        if abs(best.flops_pct - target_pct) <= tolerance:
            break
        mid = evaluate((low + high) / 2)
        points.append(mid)
        low, high = (mid.offset, high) if mid.flops_pct > target_pct else (low, mid.offset)
    return min(points, key=lambda p: abs(p.flops_pct - target_pct)), points


def format_points(points: List[OffsetPoint]) -> str:
    """The offset -> (FLOPs %, AP) table, by offset."""
    rows = [[f"{p.offset:+.4f}", f"{p.flops_pct:.1f}", "-" if p.ap is None else f"{p.ap:.1f}"]
            for p in sorted(points, key=lambda p: p.offset)]
    return tabulate(rows, headers=["offset", "FLOPs % of dense", "box AP"], tablefmt="pipe")


def run_budget_search(cfg, target_pct: float, dataset_name: Optional[str] = None, num_images: int = 0,
                      tolerance: float = 0.5, on_step: Optional[Callable[[OffsetPoint], None]] = None,
                      verbose: bool = False) -> Tuple[OffsetPoint, List[OffsetPoint]]:
    """:func:`find_offset_for_budget` for the model of ``cfg`` (``MODEL.WEIGHTS``)
    on ``dataset_name`` (default: the first of ``DATASETS.TEST``), on its first
    ``num_images`` images (0: all). ``on_step`` is called with each point as it
    is evaluated (default: a log line). The evaluators' own output (pycocotools'
    tables, the SACT summary) is shown only when ``verbose``."""
    from detectron2.data import DatasetCatalog, build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator
    from detectron2.modeling import build_model

    from sact_det.data import check_num_classes
    from sact_det.data.mapper import ReportingDatasetMapper
    from sact_det.engine.checkpoint import SACTCheckpointer
    from sact_det.evaluation.evaluator import SACTEvaluator
    from sact_det.utils.env import has_compiled_ops

    dataset_name = dataset_name or cfg.DATASETS.TEST[0]
    check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, [dataset_name])
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SACTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    dicts = DatasetCatalog.get(dataset_name)
    dicts = dicts[:num_images] if num_images else dicts
    loader = build_detection_test_loader(dataset=dicts, mapper=ReportingDatasetMapper(cfg, False),
                                         num_workers=cfg.DATALOADER.NUM_WORKERS)

    image_ids = [d["image_id"] for d in dicts]

    class SubsetCOCOEvaluator(COCOEvaluator):
        def evaluate(self):  # AP over the images evaluated, not the whole dataset
            return super().evaluate(img_ids=image_ids)

    def evaluators():
        coco = SubsetCOCOEvaluator(dataset_name, output_dir=None, use_fast_impl=has_compiled_ops())
        return DatasetEvaluators([coco, SACTEvaluator(dataset_name, distributed=False, log_summary=verbose)])

    def log_step(point):
        logger.info(f"offset {point.offset:+.4f}: FLOPs {point.flops_pct:.1f}% of dense, box AP {point.ap}")

    def evaluate(offset):
        # pycocotools prints its tables on stdout at every evaluation.
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            point = evaluate_offset(model, loader, evaluators, offset)
        (on_step or log_step)(point)
        return point

    return find_offset_for_budget(evaluate, target_pct, tolerance)
