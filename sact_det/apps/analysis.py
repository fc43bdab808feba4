"""Parameters, FLOPs, activations and structure of a SACT detector
(``tools/analyze_model.py``, after Detectron2's tool of the same name).

Two FLOP counts are reported side by side, because they answer different questions:

* **fvcore** (Detectron2's ``FlopCountAnalysis``, times 2 so that a multiply-add
  is 2 FLOPs, as in the paper): what the PyTorch modules executed, per module.
  For an adaptive block this is the dense masked execution: every unit it
  evaluated, at every position (``torch.where`` keeps the active ones); fvcore
  also counts batch norm and other element-wise operations it knows.
* **the paper's convention** (the detector's own :class:`~sact_det.modeling.report.SACTReport`,
  ``output["sact"]``): convolutions only, each unit on its active positions, for
  the feature extractor, plus whatever other scalars the report carries
  (e.g. whole-detector FLOPs once the report has them).

Counts are per input: over images of ``DATASETS.TEST`` (mean +- std, like
Detectron2's tool) or over random images of given network-input sizes.
"""
import itertools
import warnings
from dataclasses import fields
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from tabulate import tabulate

from detectron2.data import build_detection_test_loader
from detectron2.export import TracingAdapter
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import ActivationCountAnalysis, parameter_count

from sact_det.data import check_datasets_exist
from sact_det.engine.predictor import build_inference_model
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage

__all__ = ["TASKS", "InputGroup", "dataset_inputs", "size_inputs", "module_rows", "parameter_table",
           "flop_tables", "activation_table", "report_scalars", "analyze_model"]

TASKS = ("parameter", "flop", "activation", "structure")
InputGroup = Tuple[str, List[List[dict]]]  # (column title, model inputs: one list[dict] per image)
Row = Tuple[str, Callable[[Dict[str, float]], float]]  # (label, value from counts by module name)


def dataset_inputs(cfg, num_inputs: int) -> List[InputGroup]:
    """The first ``num_inputs`` images of ``DATASETS.TEST[0]`` as the test data
    loader gives them (test-time resizing): one column, mean +- std."""
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST names no dataset; give --sizes HxW or a test dataset")
    name = cfg.DATASETS.TEST[0]
    check_datasets_exist([name])
    loader = build_detection_test_loader(cfg, name)
    inputs = list(itertools.islice(loader, num_inputs))
    return [(f"{len(inputs)} images of {name}", inputs)]


def size_inputs(sizes: Sequence[Tuple[int, int]], seed: int = 0) -> List[InputGroup]:
    """One random image (seeded, uniform pixels) per network-input size, fed as
    is (no resizing): one column per size."""
    generator = torch.Generator().manual_seed(seed)
    groups = []
    for height, width in sizes:
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        groups.append((f"{height}x{width}", [[{"image": image, "height": height, "width": width}]]))
    return groups


def module_rows(model) -> List[Row]:
    """The rows of every per-module table: the stem, each adaptive block's
    residual units and its halting branches apart (the feature extractor's, and
    a box head's if it is one), the RPN, the box head, and totals."""
    def get(name):
        return lambda counts: counts.get(name, 0)

    def block_rows(prefix):
        rows = []
        for name, module in model.named_modules():
            if isinstance(module, AdaptiveStage) and name.startswith(prefix):
                halting = f"{name}.halting"
                rows.append((f"{name} (units)", lambda c, b=name, h=halting: c.get(b, 0) - c.get(h, 0)))
                if module.adaptive:
                    rows.append((halting, get(halting)))
        return rows

    head = block_rows("roi_heads.") or [("roi_heads.res5", get("roi_heads.res5"))]
    return ([("backbone.stem", get("backbone.stem"))] + block_rows("backbone.")
            + [("backbone (feature extractor)", get("backbone")),
               ("proposal_generator (RPN)", get("proposal_generator"))]
            + head + [("roi_heads (all)", get("roi_heads")), ("total", get(""))])


def _cell(values: Sequence[float], fmt: str) -> str:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{values.mean():{fmt}} ± {values.std():{fmt}}"


def _tabulate(body, headers) -> str:
    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True,
                    colalign=["left"] + ["right"] * (len(headers) - 1))


def _table(rows: List[Row], groups: List[Tuple[str, List[Dict[str, float]]]], fmt: str) -> str:
    """One line per row, one column per input group (counts by module, per input)."""
    body = [[label] + [_cell([fn(counts) for counts in per_input], fmt) for _, per_input in groups]
            for label, fn in rows]
    return _tabulate(body, ["module"] + [title for title, _ in groups])


def parameter_table(model) -> str:
    """Parameters per module, halting branches apart, and their share."""
    counts = dict(parameter_count(model))
    halting = sum(v for k, v in counts.items() if k.endswith(".halting"))
    table = _table(module_rows(model), [("parameters", [counts])], ",.0f")
    return (f"{table}\nhalting branches: {halting:,} parameters "
            f"({100.0 * halting / max(counts[''], 1):.3f}% of the detector)")


def _without_prefix(counts: Dict[str, float]) -> Dict[str, float]:
    """fvcore names a TracingAdapter's modules ``model.<name>``; the total is ``""``."""
    out = {"": counts.get("", 0)}
    out.update({k[len("model."):]: v for k, v in counts.items() if k.startswith("model.")})
    return out


def _traced_counts(model, inputs, analysis: str) -> Dict[str, float]:
    """fvcore's counts by module for one input (``analysis``: flop or activation)."""
    with warnings.catch_warnings():
        # Tracing warns at every Python decision on a tensor (the halting, the
        # number of detections): expected, the trace is only counted.
        warnings.simplefilter("ignore")
        if analysis == "flop":
            counter = FlopCountAnalysis(model, inputs)
        else:
            adapter = TracingAdapter(model, inputs, allow_non_tensor=True)
            counter = ActivationCountAnalysis(adapter, adapter.flattened_inputs)
        counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return _without_prefix(dict(counter.by_module()))


def _numbers(prefix: str, value):
    """(name, number) pairs of a report value: numbers, and dicts of numbers."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(f"{prefix}/{key}", item)


def report_scalars(report) -> Dict[str, float]:
    """Every scalar of a :class:`~sact_det.modeling.report.SACTReport`: its ``record()``
    and its numeric fields, so that fields added to the report (e.g. the whole
    detector's FLOPs) are reported without a change here."""
    values = dict(report.record())
    for field in fields(report):
        values.setdefault(field.name, getattr(report, field.name))
    return dict(pair for key, value in values.items() if not _is_geometry(key)
                for pair in _numbers(key, value))


def _is_geometry(key: str) -> bool:
    """Image size and map strides: how the report is laid out, not what was measured."""
    return key == "image_size" or "stride" in key


def flop_tables(model, groups: List[InputGroup]) -> str:
    """fvcore's FLOPs by module (x2) and the SACT report's scalars, per input group."""
    fvcore_counts, reports = [], []
    for title, inputs in groups:
        per_input, scalars = [], []
        for batch in inputs:
            counts = _traced_counts(model, batch, "flop")
            per_input.append({k: 2 * v for k, v in counts.items()})
            with torch.no_grad():
                scalars.append(report_scalars(model(batch)[0]["sact"]))
        fvcore_counts.append((title, per_input))
        reports.append((title, scalars))
    keys = list(dict.fromkeys(k for _, scalars in reports for s in scalars for k in s))
    body = [[key] + [_cell([s.get(key, float("nan")) for s in scalars],
                           ".3e" if "flops" in key and "pct" not in key else ".3f")
                     for _, scalars in reports] for key in keys]
    return ("FLOPs by fvcore x2 (executed PyTorch modules; adaptive blocks as dense masked "
            "execution: every evaluated unit at every position):\n"
            + _table(module_rows(model), fvcore_counts, ".3e")
            + "\n\nSACT report (output[\"sact\"]; FLOPs in the paper's convention: convolutions only, "
              "each unit on its active positions):\n"
            + _tabulate(body, ["field"] + [title for title, _ in reports]))


def activation_table(model, groups: List[InputGroup]) -> str:
    """fvcore's activation counts (outputs of convolutions and linear layers) by module."""
    counts = [(title, [_traced_counts(model, batch, "activation") for batch in inputs])
              for title, inputs in groups]
    return "Activations by fvcore (elements output by convolutions and linear layers):\n" + \
        _table(module_rows(model), counts, ".3e")


def analyze_model(cfg, tasks: Sequence[str], num_inputs: int = 10,
                  sizes: Sequence[Tuple[int, int]] = ()) -> str:
    """The text of the requested ``tasks`` (:data:`TASKS`), on dataset images or
    on random images of ``sizes``."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"--tasks: expected some of {TASKS}, got {unknown}")
    model = build_inference_model(cfg)
    groups = None
    if {"flop", "activation"} & set(tasks):
        groups = size_inputs(sizes) if sizes else dataset_inputs(cfg, num_inputs)
    sections = []
    if not cfg.MODEL.WEIGHTS:
        sections.append("(MODEL.WEIGHTS is empty: a randomly initialised model; "
                        "an untrained halting policy evaluates almost every unit)")
    for task in tasks:
        if task == "parameter":
            sections.append("Parameters:\n" + parameter_table(model))
        elif task == "flop":
            sections.append(flop_tables(model, groups))
        elif task == "activation":
            sections.append(activation_table(model, groups))
        else:
            sections.append("Structure:\n" + str(model))
    return "\n\n".join(sections)
