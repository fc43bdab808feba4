"""TorchScript export of SACT detectors (``tools/deploy/export_model.py``).

The model is traced through Detectron2's ``TracingAdapter``, as Detectron2's own
``export_model.py --export-method tracing`` does, in the *dense masked*
execution with every unit evaluated (:func:`~sact_det.modeling.sact.adaptive_stage.every_unit_evaluated`):
tracing records Python decisions for the example image only, and the early stop
of Alg. 2 line 11 is such a decision. Evaluating every unit, masked, gives the
same detections and ponder maps on any image. The perforated and tiled
executions gather the active positions, whose number depends on the image:
they cannot be traced into one graph, and asking for them is an error that says so.

The exported module takes one image, ``float32 [3, H, W]`` in ``INPUT.FORMAT``
(BGR by default), 0-255, already resized as the config's test-time resizing
does, and returns a tuple of tensors named in :func:`output_names` (also stored
in the file as ``sact_outputs.json``): boxes ``[N, 4]`` (x0, y0, x1, y1 in the
input's pixels), scores ``[N]``, classes ``[N]``, then per block the ponder
cost map and the number of evaluated units per position, at the block's
resolution. The outputs carry no autograd graph (the parameters are frozen
before tracing).

Only TorchScript tracing is provided (Detectron2's ``--export-method tracing``,
``--format torchscript``). Scripting cannot compile Detectron2's and the
halting's Python control flow, and ONNX is not provided: the ``onnx`` package
is not a dependency, and an ONNX export of the data-dependent detection counts is untested.
"""
import importlib.util
import json
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from PIL import Image

from detectron2.data import build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.export import TracingAdapter

from sact_det.data import check_datasets_exist
from sact_det.data.images import read_image_rgb
from sact_det.data.mapper import ReportingDatasetMapper
from sact_det.engine.predictor import build_inference_model
from sact_det.modeling.sact.adaptive_stage import every_unit_evaluated
from sact_det.utils.files import atomic_path

__all__ = ["FORMATS", "EXPORT_METHODS", "ExportError", "check_exportable", "output_names", "traceable_inference",
           "check_format", "export_torchscript", "sample_inputs", "export_model", "OUTPUTS_FILE"]

FORMATS = ("torchscript",)
EXPORT_METHODS = ("tracing",)  # Detectron2's --export-method values that sact-det provides
OUTPUTS_FILE = "sact_outputs.json"  # extra file in the TorchScript archive: the output names


class ExportError(ValueError):
    """The model or format cannot be exported; the message says why."""


def check_exportable(model) -> None:
    """Raises :class:`ExportError` for executions whose shapes depend on the image."""
    backbone = model.backbone
    if backbone.execution != "dense":
        raise ExportError(
            f"MODEL.SACT.EXECUTION {backbone.execution} cannot be exported: it gathers the positions "
            "still active in each unit, and their number depends on the image (data-dependent "
            "shapes), so a traced graph would only fit the example image. Export MODEL.SACT.EXECUTION "
            "dense: the masked execution computes the same function.")
    if any(stage.tile_size > 1 for stage in backbone.stages):
        raise ExportError(
            "MODEL.SACT.TILE_SIZE > 1 cannot be exported: the tiles of a feature map are counted in "
            "Python from its size, so a traced graph would only fit the example image's size.")


def output_names(model) -> List[str]:
    """Names of the exported model's outputs, in order."""
    names = ["boxes", "scores", "classes"]
    for name, stage in zip(model.backbone.stage_names, model.backbone.stages):
        names += ([f"ponder_map_{name}"] if stage.adaptive else []) + [f"units_{name}"]
    return names


def traceable_inference(model, inputs) -> Tuple[torch.Tensor, ...]:
    """``SACTRCNN`` inference for one image as a flat tuple of tensors
    (:func:`output_names`): detections in the network input's coordinates, as
    ``do_postprocess=False`` gives them, and each block's maps."""
    images, features, stage_outputs = model._extract(inputs)
    proposals, _ = model.proposal_generator(images, features, None)
    results, _ = model.roi_heads(images, features, proposals, None)
    instances = results[0]
    outputs = [instances.pred_boxes.tensor, instances.scores, instances.pred_classes]
    for name in model.backbone.stage_names:
        out = stage_outputs[name]
        outputs += ([out.ponder_map[0]] if out.ponder_map is not None else []) + [out.num_units_map[0]]
    return tuple(outputs)


def export_torchscript(model, inputs: List[dict], path: str):
    """Traces ``model`` on ``inputs`` (one image, Detectron2's input format)
    and saves it to ``path``; returns the traced module. ``model``'s parameters
    are frozen (``requires_grad`` False) first, so the exported outputs carry no autograd graph."""
    check_exportable(model)
    image = inputs[0]["image"]
    model.requires_grad_(False)  # the traced graph computes no gradients: outputs without grad_fn
    adapter = TracingAdapter(model, [{"image": image}], inference_func=traceable_inference)
    extra = {OUTPUTS_FILE: json.dumps({"inputs": ["image: float32 [3, H, W], INPUT.FORMAT, 0-255, resized"],
                                       "outputs": output_names(model)})}
    with torch.no_grad(), every_unit_evaluated(model), warnings.catch_warnings():
        # Tracing warns at every Python decision on a tensor; with every unit
        # evaluated, those left are Detectron2's own, which it makes traceable.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # This torch deprecates TorchScript in favour of torch.export, which does not
        # yet take Detectron2's data-dependent detection counts; TorchScript still works.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        traced = torch.jit.trace(adapter, (image,), check_trace=False)  # the tests compare on other images
        with atomic_path(path) as temporary:
            torch.jit.save(traced, temporary, _extra_files=extra)
    return traced


def sample_inputs(cfg, sample_image: Optional[str] = None) -> List[dict]:
    """The tracing example: ``sample_image`` read and resized as the predictor
    does, or else the first image of ``DATASETS.TEST[0]`` from its test loader."""
    if sample_image:
        # sact-det's reader: any bit depth, and an error naming the file when it is not an image
        image = convert_PIL_to_numpy(Image.fromarray(read_image_rgb(sample_image)), cfg.INPUT.FORMAT)
        resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        image = resize.get_transform(image).apply_image(image)
        return [{"image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1))}]
    if not cfg.DATASETS.TEST:
        raise ExportError("--sample-image: expected an image, as DATASETS.TEST names no dataset to take one from")
    check_datasets_exist(cfg.DATASETS.TEST[:1])
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0], mapper=ReportingDatasetMapper(cfg, False))
    return next(iter(loader))


def check_format(export_format: str, export_method: str = "tracing") -> None:
    """Raises :class:`ExportError` for a format or export method that is not provided, saying why."""
    if export_format == "onnx":
        missing = importlib.util.find_spec("onnx") is None
        raise ExportError("--format onnx: not provided: " + (
            "the onnx package is not installed, and " if missing else "") +
            "sact-det's ONNX export is not tested; use --format torchscript")
    if export_format not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, got {export_format!r}")
    if export_method not in EXPORT_METHODS:
        raise ExportError(f"--export-method {export_method}: not provided: only tracing (scripting cannot "
                          "compile Detectron2's and the halting's Python control flow); use --export-method tracing")


def export_model(cfg, output_dir: str, export_format: str = "torchscript",
                 sample_image: Optional[str] = None, export_method: str = "tracing") -> Tuple[str, Sequence[str]]:
    """Builds the detector of ``cfg`` (``MODEL.WEIGHTS`` loaded) and writes
    ``output_dir/model.ts`` (:func:`check_format` first); returns (path, output names)."""
    check_format(export_format, export_method)
    model = build_inference_model(cfg)
    path = os.path.join(output_dir, "model.ts")
    export_torchscript(model, sample_inputs(cfg, sample_image), path)
    return path, output_names(model)
