"""The sparse executors: one block, and the stem plus every block.

A block runs Algorithm 2 with :class:`~sact_det.modeling.sact.act.HaltingState` (the same
object as the dense path) on the rows of :mod:`.rows`: the first unit densely,
then each unit where positions are still active, by the functions of
:mod:`.units`, until every position has halted (line 11).
"""
from contextlib import nullcontext
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import record_function

from detectron2.modeling.backbone.resnet import BasicStem

from sact_det.config.modes import SPARSE_EXECUTIONS
from sact_det.modeling.flops import dense_unit_flops, halting_flops, perforated_unit_flops
from sact_det.modeling.sact.act import HaltingState
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage, StageOutput, subsample_valid
from sact_det.modeling.sact.halting import tile_mean
from sact_det.modeling.sparse.folding import DENSE_ONLY, FoldedConv, FoldedHalting, FoldedUnit, WeightWatch
from sact_det.modeling.sparse.rows import BlockRows, MapLayout
from sact_det.modeling.sparse.units import act_unit, dense_unit, perforated_unit, tiled_unit

__all__ = ["SparseStageExecutor", "SparseBackboneExecutor"]


def scope(name: str):
    """A profiler scope (``sact::...``, shown by ``tools/benchmark.py --profile``),
    entered only while a profiler runs: each costs about 7 us, and a forward
    pass enters some 150."""
    return record_function(name) if torch._C._autograd._profiler_enabled() else nullcontext()


class SparseStageExecutor:
    """Inference of one :class:`AdaptiveStage` with folded weights and sparse units.

    Built from the stage's weights at construction; :meth:`is_current` tells
    whether they have changed since (then build a new one).
    """

    def __init__(self, stage: AdaptiveStage, execution: str, max_active: float = 0.8):
        """
        Args:
            execution: "perforated" or "tiled".
            max_active: a unit with more than this share of its map active runs as
                dense convolutions on the whole map, keeping the active positions
                (faster than gathering at such densities; counted as dense in
                ``executed_flops``). Above 1, every partial unit runs sparsely.
        """
        if execution not in SPARSE_EXECUTIONS:
            raise ValueError(f"sparse execution must be one of {SPARSE_EXECUTIONS}, got {execution!r}")
        if execution == "tiled" and stage.tile_size < 2:
            raise ValueError("tiled execution needs MODEL.SACT.TILE_SIZE >= 2")
        self.stage, self.execution, self.max_active = stage, execution, max_active
        self.stage_units = stage.units
        self.units = [FoldedUnit(u) for u in self.stage_units]
        self.weights_finite = all(u.finite for u in self.units)  # see FoldedConv.finite
        if stage.halting_type == "sact" and not all(u.sparse for u in self.units[1:]):
            raise ValueError("sparse execution needs stride-1, ungrouped, undilated units after the first")
        self.halting = [FoldedHalting(branch) for branch in stage.halting or []]
        self._weights = WeightWatch(stage)

    def is_current(self) -> bool:
        """Whether the stage's weights are still those this executor folded."""
        return not self._weights.changed()

    def __call__(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> StageOutput:
        """As :meth:`AdaptiveStage.forward` (``valid`` at the input resolution)."""
        stage, first = self.stage, self.units[0]
        batch, device = x.shape[0], x.device
        height, width = first.output_size(x.shape[-2:])
        layout = MapLayout(batch, height, width, subsample_valid(valid, first.stride), device)
        spatial = stage.halting_type == "sact"
        out = first.dense(x.contiguous(memory_format=torch.channels_last), valid)  # Alg. 2, l = 1: dense
        rows = BlockRows(layout, out.permute(0, 2, 3, 1).reshape(layout.num, -1), spatial)
        executed = dense_unit_flops(self.stage_units[0], tuple(x.shape[-2:]))[0] * batch
        del x, out
        tiles = layout.tiles(stage.tile_size) if spatial and stage.tile_size > 1 else None

        state = HaltingState(layout.valid, stage.eps)
        computed_masks: List[torch.Tensor] = []
        for index, unit in enumerate(self.units):
            with scope("sact::bookkeeping"):
                active = state.active_positions()
            halting = self.halting[index] if index < stage.num_units - 1 else None
            dilated = None  # None: every row may have changed
            if index > 0:
                if active.numel() == 0:
                    break  # Alg. 2 line 11
                computed_masks.append(state.active.view(batch, 1, height, width))
                rows.begin_unit(halting)
                with scope("sact::unit"):
                    conv1_at, conv23_at, dilated = self._run_unit(unit, rows, active, tiles)
                executed += perforated_unit_flops(self.stage_units[index], conv23_at, conv1_at)
            score = None  # h^L = 1, eq. (5)
            if halting is not None:
                with scope("sact::halting"):
                    logits, taps_at = rows.halting_logits(halting, active, dilated)
                    images = 1 if batch == 1 else int(state.active.view(batch, -1).any(1).sum())
                    executed += halting_flops(stage.halting[index], taps_at, images)
                    score = torch.sigmoid(logits)
                    if tiles is not None:
                        score = tile_mean(score, tiles[1][active], tiles[2])
            with scope("sact::bookkeeping"):  # lines 18-34; all active: no index arithmetic
                weight = state.update(score, None if active.numel() == layout.num else active)
            with scope("sact::accumulate"):
                rows.accumulate(active, weight)
        features = rows.block_output().view(batch, height, width, -1).permute(0, 3, 1, 2)
        return StageOutput(features=features, valid=layout.valid.view(batch, 1, height, width),
                           num_units_map=state.num_units.view(batch, height, width),
                           ponder_map=state.ponder_cost.view(batch, height, width),
                           computed_masks=computed_masks, executed_flops=executed,
                           scores_finite=state.scores_finite)

    def _run_unit(self, unit: FoldedUnit, rows: BlockRows, active: torch.Tensor,
                  tiles) -> Tuple[int, int, Optional[torch.Tensor]]:
        """One unit after the first, at the active positions, by the cheapest
        way for this execution and density. Returns the positions of conv1 and
        of conv2/conv3, and the dilated active set (None if it rewrote every row)."""
        lay = rows.layout
        if self.stage.halting_type == "act":
            return act_unit(unit, rows, torch.unique(lay.image_of[active])) + (None,)
        if active.numel() >= self.max_active * lay.num:
            return dense_unit(unit, rows, active) + (None,)
        dilated, neighbour_rows = lay.dilate(active)
        if self.execution == "tiled":
            windows, tile_of, _ = tiles
            counts = tiled_unit(unit, rows, active, windows[torch.unique(tile_of[active])], self.stage.tile_size)
        else:
            counts = perforated_unit(unit, rows, active, dilated, neighbour_rows)
        return counts + (dilated,)


class SparseBackboneExecutor:
    """The stem (folded, channels-last) and one :class:`SparseStageExecutor` per block."""

    def __init__(self, stem: nn.Module, stages, execution: str, max_active: float = 0.8):
        if not isinstance(stem, BasicStem):
            raise ValueError(f"sparse execution (MODEL.SACT.EXECUTION) runs Detectron2's BasicStem, not "
                             f"{type(stem).__name__} (MODEL.SACT.UNIT_TYPE pre_activation); {DENSE_ONLY}")
        self.execution, self.max_active = execution, max_active
        self.stem_conv = FoldedConv(stem.conv1)
        self.stem_finite = self.stem_conv.finite  # see FoldedConv.finite
        self._stem_weights = WeightWatch(stem)
        self.stages = [SparseStageExecutor(stage, execution=execution, max_active=max_active) for stage in stages]

    def is_current(self, execution: str, max_active: float) -> bool:
        return (execution == self.execution and max_active == self.max_active
                and all(s.is_current() for s in self.stages)
                and not self._stem_weights.changed())

    def stem(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stem with folded batch norm; ``valid`` as for :func:`sact_det.modeling.backbone.stem_forward`."""
        x = self.stem_conv.relu(x.contiguous(memory_format=torch.channels_last))
        if valid is not None:
            x.mul_(subsample_valid(valid, 2))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return x.mul_(subsample_valid(valid, 4)) if valid is not None else x
