"""The per-image SACT report: what the adaptive network computed on one image.

:class:`SACTReport` is built at inference from each block's
:class:`~sact_det.adaptive_stage.StageOutput` and returned by the detector as
``output["sact"]``. Every consumer (the evaluator, the visualiser, the
benchmark, the tools) reads its fields; :meth:`SACTReport.record` gives the
JSON-ready scalars.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .flops import stage_flops, stem_flops
from .maps import total_ponder_map

__all__ = ["SACTReport", "build_reports"]


@dataclass
class SACTReport:
    """One image's FLOPs, ponder cost and ponder maps (feature extractor: stem + res2-res4).

    FLOPs follow the paper's convention (:mod:`sact_det.flops`); ``dense_flops``
    is the dense reference ResNet's at the same input size
    (``MODEL.SACT.FLOPS_REFERENCE_DEPTH``). Ponder quantities are None for a
    non-adaptive model (``MODEL.SACT.TYPE none``).
    """

    image_size: Tuple[int, int]  # (h, w) of the network input (the resized image)
    flops: int
    flops_per_block: Dict[str, int]  # "stem", "res2", ...
    dense_flops: int
    units_per_block: Dict[str, float]  # mean N over the image's positions (eq. 7)
    ponder_cost: Optional[float] = None  # sum over blocks of rho (eq. 11, Alg. 2 line 37)
    ponder_cost_per_block: Optional[Dict[str, float]] = None
    ponder_maps: Optional[Dict[str, torch.Tensor]] = None  # per block, float32 [h_k, w_k] on its grid
    ponder_map: Optional[torch.Tensor] = None  # total, on the finest block's grid
    ponder_map_stride: Optional[int] = None  # input pixels per cell of ponder_map

    @property
    def flops_pct(self) -> float:
        """Feature-extractor FLOPs as % of the dense reference (Table 1's "FLOPs")."""
        return 100.0 * self.flops / self.dense_flops

    @property
    def adaptive(self) -> bool:
        return self.ponder_maps is not None

    def record(self) -> dict:
        """The scalars, JSON-ready (maps left out)."""
        return {
            "image_size": list(self.image_size), "flops": self.flops, "flops_per_block": self.flops_per_block,
            "dense_flops": self.dense_flops, "flops_pct": self.flops_pct, "units_per_block": self.units_per_block,
            "ponder_cost": self.ponder_cost, "ponder_cost_per_block": self.ponder_cost_per_block,
        }


def build_reports(backbone, stage_outputs: Dict[str, "StageOutput"],  # noqa: F821
                  image_sizes: Sequence[Tuple[int, int]]) -> List[SACTReport]:
    """Per-image reports of a batch (CPU values).

    Args:
        backbone: the :class:`~sact_det.backbone.SACTResNet` that produced them.
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
            units_per_block={k: float(v[index]) for k, v in units.items()})
        if ponder:
            maps = {}
            for name in ponder:
                h, w = map_sizes[name][index]
                maps[name] = stage_outputs[name].ponder_map[index, :h, :w].detach().cpu()
            report.ponder_cost_per_block = {k: float(v[index]) for k, v in ponder.items()}
            report.ponder_cost = sum(report.ponder_cost_per_block.values())
            report.ponder_maps = maps
            report.ponder_map = total_ponder_map(list(maps.values()))
            report.ponder_map_stride = strides[next(iter(maps))]
        reports.append(report)
    return reports
