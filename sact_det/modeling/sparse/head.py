"""The res5 box head at inference with folded batch norm and channels-last
maps; with ACT over proposals, each unit runs on the still-active proposals
only (a gather along the proposal dimension: Alg. 1 per proposal)."""
from typing import Tuple

import torch

from sact_det.modeling.sact.act import HaltingState
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage
from sact_det.modeling.sparse.folding import FoldedHalting, FoldedUnit, WeightWatch

__all__ = ["GatheredHeadExecutor"]


class GatheredHeadExecutor:
    """Inference of a res5 :class:`AdaptiveStage` over ``[R, C, 14, 14]`` pooled
    proposal features: returns the box predictor's input (the spatial mean of
    the block output, eq. 10), each proposal's number of units, and whether
    every halting score was finite (a bool scalar tensor)."""

    def __init__(self, stage: AdaptiveStage):
        if stage.halting_type == "sact":
            raise ValueError("the box head supports HEAD_TYPE none or act, not sact")
        self.stage = stage
        self.units = [FoldedUnit(u) for u in stage.units]
        self.weights_finite = all(u.finite for u in self.units)  # see FoldedConv.finite
        self.halting = [FoldedHalting(branch) for branch in stage.halting or []]
        self._weights = WeightWatch(stage)

    def is_current(self) -> bool:
        return not self._weights.changed()

    def __call__(self, pooled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num = pooled.shape[0]
        x = self.units[0].dense(pooled.contiguous(memory_format=torch.channels_last))  # [R, C, h, w]
        # Units after the first write over their input: x is this executor's own
        # map (or a gathered copy), and eq. (10) below sums pooled means, not maps.
        if not self.stage.adaptive:
            for unit in self.units[1:]:
                x = unit.dense(x, inplace=True)
            return (x.mean((2, 3)), torch.full((num,), len(self.units), dtype=torch.int32),
                    torch.ones((), dtype=torch.bool))
        state = HaltingState(torch.ones(num, dtype=torch.bool, device=pooled.device), self.stage.eps)
        output = torch.zeros((num, x.shape[1]), device=pooled.device)  # float32, eq. (10) pooled
        for index, unit in enumerate(self.units):
            active = state.active_positions()
            if index > 0:
                if active.numel() == 0:
                    break  # Alg. 1: every proposal has halted
                if active.numel() == num:
                    x = unit.dense(x, inplace=True)
                else:  # gather the active proposals, run the unit, scatter back
                    x[active] = unit.dense(x[active].contiguous(memory_format=torch.channels_last), inplace=True)
            pooled_x = (x if active.numel() == num else x[active]).float().mean((2, 3))
            score = None  # h^L = 1, eq. (5)
            if index < len(self.units) - 1:
                score = torch.sigmoid(self.halting[index].global_logit(pooled_x))  # eq. (6)
            weight = state.update(score, active)
            output.index_add_(0, active, pooled_x * weight[:, None])
        return output.to(pooled.dtype), state.num_units, state.scores_finite
