"""The per-image SACT report: what the adaptive network computed on one image.

:class:`SACTReport` is built at inference from each block's
:class:`~sact_det.modeling.sact.adaptive_stage.StageOutput` and returned by the detector as
``output["sact"]``. Every consumer (the evaluator, the visualiser, the
benchmark, the tools) reads its fields; :meth:`SACTReport.record` gives the
JSON-ready scalars.

Scale: ``image_size`` and the ponder maps are at the *network input's* scale
(the image after the test-time resizing, e.g. shorter side 600), while the
detections (``output["instances"]``) are at the original image's scale.
:meth:`SACTReport.ponder_map_on_image` puts a map onto the original image.
"""
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from sact_det.modeling.flops import linear_flops, rpn_flops, stage_flops, stem_flops
from sact_det.modeling.maps import border_ratio, map_to_image, total_ponder_map

__all__ = ["SACTReport", "build_reports", "add_detector_flops", "add_classifier_flops"]


# Read-only values computed from the fields, also readable as report[key].
DERIVED_KEYS = ("flops_pct", "detector_flops", "detector_dense_flops", "detector_flops_pct")


@dataclass
class SACTReport(Mapping):
    """One image's FLOPs, units and ponder cost, and their maps (the detector's feature
    extractor: stem + res2-res4; the classifier: stem + res2-res5 + its linear layer).

    FLOPs follow the paper's convention (:mod:`sact_det.modeling.flops`); ``dense_flops``
    is the dense reference ResNet's at the same input size
    (``MODEL.SACT.FLOPS_REFERENCE_DEPTH``). Ponder quantities are None for a
    non-adaptive model (``MODEL.SACT.TYPE none``). ``image_size`` and the maps
    are at the network input's scale (see the module's docstring).

    Read it as attributes (``report.flops``) or as a read-only mapping
    (``report["flops"]``, ``report.keys()``, ``dict(report)``): the keys are the
    fields below and :data:`DERIVED_KEYS`. :meth:`record` gives the scalars, JSON-ready.
    """

    image_size: Tuple[int, int]  # (h, w) of the network input (the resized image)
    flops: int
    flops_per_block: Dict[str, int]  # "stem", "res2", ...
    dense_flops: int
    units_per_block: Dict[str, float]  # mean N over the image's positions (eq. 7)
    units_maps: Optional[Dict[str, torch.Tensor]] = None  # per block, int [h_k, w_k]: N at each position
    ponder_cost: Optional[float] = None  # sum over blocks of rho (eq. 11, Alg. 2 line 37)
    ponder_cost_per_block: Optional[Dict[str, float]] = None
    ponder_maps: Optional[Dict[str, torch.Tensor]] = None  # per block, float32 [h_k, w_k] on its grid
    ponder_strides: Optional[Dict[str, int]] = None  # input pixels per cell of each block's map
    ponder_map: Optional[torch.Tensor] = None  # total, on the finest block's grid
    ponder_map_stride: Optional[int] = None  # input pixels per cell of ponder_map
    # Per block: mean ponder cost on the outermost ring of cells / on the interior
    # (sact_det.modeling.maps.border_ratio; None for a map without interior).
    border_ratio_per_block: Optional[Dict[str, Optional[float]]] = None
    # The whole detector (None until add_detector_flops): the RPN head on the image's
    # res4 map, and the res5 box head on its proposals as evaluated.
    rpn_flops: Optional[int] = None
    box_head_flops: Optional[int] = None
    box_head_dense_flops: Optional[int] = None  # every res5 unit on every proposal
    num_proposals: Optional[int] = None
    head_units: Optional[float] = None  # mean units per proposal (ACT head), else None
    head_halting_shares: Optional[List[float]] = None  # share of proposals halting after each unit

    @property
    def flops_pct(self) -> float:
        """Feature-extractor FLOPs as % of the dense reference (Table 1's "FLOPs")."""
        return 100.0 * self.flops / self.dense_flops

    @property
    def detector_flops(self) -> Optional[int]:
        """Feature extractor + RPN + box head."""
        return None if self.rpn_flops is None else self.flops + self.rpn_flops + self.box_head_flops

    @property
    def detector_dense_flops(self) -> Optional[int]:
        """The same detector run densely: the dense reference feature extractor,
        the RPN and every res5 unit on every proposal (no halting branches);
        for the paper's configs, Detectron2's R-101-C4 Faster R-CNN."""
        return None if self.rpn_flops is None else self.dense_flops + self.rpn_flops + self.box_head_dense_flops

    @property
    def detector_flops_pct(self) -> Optional[float]:
        return None if self.rpn_flops is None else 100.0 * self.detector_flops / self.detector_dense_flops

    @property
    def adaptive(self) -> bool:
        return self.ponder_maps is not None

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(f"SACTReport has no field {key!r}; its fields: {', '.join(self._keys())}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls)) + DERIVED_KEYS

    def ponder_map_on_image(self, image_size: Tuple[int, int], block: Optional[str] = None) -> np.ndarray:
        """The total ponder cost map (or ``block``'s, e.g. ``"res3"``) as float32
        ``[H, W]`` over an image of ``image_size`` = (H, W), e.g. the original
        image (``output["instances"].image_size``): each cell of the map keeps
        its value over the pixels it covers (nearest neighbour,
        :func:`~sact_det.modeling.maps.map_to_image`)."""
        if not self.adaptive:
            raise ValueError("the model is not adaptive (MODEL.SACT.TYPE none): it has no ponder cost maps")
        if block is None:
            return map_to_image(self.ponder_map, self.image_size, image_size, self.ponder_map_stride)
        if block not in self.ponder_maps:
            raise KeyError(f"no ponder map of block {block!r}; the blocks are {', '.join(self.ponder_maps)}")
        return map_to_image(self.ponder_maps[block], self.image_size, image_size, self.ponder_strides[block])

    def record(self) -> dict:
        """The scalars, JSON-ready (maps left out)."""
        record = {
            "image_size": list(self.image_size), "flops": self.flops, "flops_per_block": self.flops_per_block,
            "dense_flops": self.dense_flops, "flops_pct": self.flops_pct, "units_per_block": self.units_per_block,
            "ponder_cost": self.ponder_cost, "ponder_cost_per_block": self.ponder_cost_per_block,
            "border_ratio_per_block": self.border_ratio_per_block,
        }
        if self.rpn_flops is not None:
            record.update(rpn_flops=self.rpn_flops, box_head_flops=self.box_head_flops,
                          num_proposals=self.num_proposals, detector_flops=self.detector_flops,
                          detector_dense_flops=self.detector_dense_flops,
                          detector_flops_pct=self.detector_flops_pct, head_units=self.head_units,
                          head_halting_shares=self.head_halting_shares)
        return record


def build_reports(backbone, stage_outputs: Dict[str, "StageOutput"],  # noqa: F821
                  image_sizes: Sequence[Tuple[int, int]]) -> List[SACTReport]:
    """Per-image reports of a batch (CPU values).

    Args:
        backbone: the :class:`~sact_det.modeling.backbone.SACTResNet` that produced them.
        stage_outputs: its blocks' outputs, by name.
        image_sizes: each image's (h, w) before padding.
    """
    sizes = [tuple(s) for s in image_sizes]
    flops_per_block = {"stem": torch.tensor([stem_flops(backbone.stem, s)[0] for s in sizes])}
    input_sizes = [stem_flops(backbone.stem, s)[1] for s in sizes]
    units, ponder, map_sizes = {}, {}, {}
    for name, stage in zip(backbone.stage_names, backbone.stages):
        out = stage_outputs[name]
        flops_per_block[name] = stage_flops(stage, out, input_sizes).cpu()
        units[name] = out.mean_units().cpu()
        if out.ponder_map is not None:
            ponder[name] = out.ponder_cost().cpu()
        input_sizes = [tuple(-(-n // stage.stride) for n in s) for s in input_sizes]
        map_sizes[name] = input_sizes
    strides = backbone.stage_strides
    reports = []
    for index, size in enumerate(sizes):
        per_block = {k: int(v[index]) for k, v in flops_per_block.items()}
        report = SACTReport(
            image_size=size, flops=sum(per_block.values()), flops_per_block=per_block,
            dense_flops=backbone.dense_reference_flops(size),
            units_per_block={k: float(v[index]) for k, v in units.items()},
            units_maps={name: _image_part(stage_outputs[name].num_units_map, index, map_sizes[name])
                        for name in units})
        if ponder:
            maps = {name: _image_part(stage_outputs[name].ponder_map, index, map_sizes[name]) for name in ponder}
            report.ponder_cost_per_block = {k: float(v[index]) for k, v in ponder.items()}
            report.ponder_cost = sum(report.ponder_cost_per_block.values())
            report.ponder_maps = maps
            report.border_ratio_per_block = {name: border_ratio(m) for name, m in maps.items()}
            report.ponder_strides = {name: strides[name] for name in maps}
            report.ponder_map = total_ponder_map(list(maps.values()))
            report.ponder_map_stride = strides[next(iter(maps))]
        reports.append(report)
    return reports


def _image_part(batch_map: torch.Tensor, index: int, map_sizes: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Image ``index``'s part of a batch's map ``[B, H, W]`` (without the padding), on the CPU."""
    h, w = map_sizes[index]
    return batch_map[index, :h, :w].detach().cpu()


def add_detector_flops(reports: List[SACTReport], rpn_head, feature_stride: int, head_reports,
                       head_num_units: int) -> None:
    """Fills the whole-detector fields of each report: the RPN head on the
    image's own feature map (``ceil(size / stride)``), and the box head from its
    :class:`~sact_det.modeling.roi_heads.HeadReport`."""
    for report, head in zip(reports, head_reports):
        size = tuple(-(-n // feature_stride) for n in report.image_size)
        report.rpn_flops = rpn_flops(rpn_head, size)
        report.box_head_flops, report.box_head_dense_flops = head.flops, head.dense_flops
        report.num_proposals = head.num_proposals
        report.head_units = head.mean_units
        report.head_halting_shares = head.halting_shares(head_num_units)


def add_classifier_flops(reports: List[SACTReport], linear: nn.Linear) -> None:
    """Adds the classifier's linear layer on the pooled features (once per image,
    ``flops_per_block["linear"]``) to each report's FLOPs and to its dense
    reference's, as the official code counts its logits layer."""
    cost = linear_flops(linear)
    for report in reports:
        report.flops_per_block["linear"] = cost
        report.flops += cost
        report.dense_flops += cost
