"""One ResNet block (a "stage": res2, res3 or res4) with ACT or SACT, Algs. 1-2.

The residual units are ordinary modules (Detectron2's ``BottleneckBlock``), kept
as children named ``0 .. L-1`` so that checkpoints written for a plain ResNet
(``res4.0.conv1.weight``, ...) load by name. The halting branches live under
``halting.{l}`` and are the only new parameters.

Execution here is *dense and masked*, as in the official implementation: every
unit is evaluated at every position and its result is kept only at the active
positions (``torch.where``), which equals evaluating it at the active positions
only (Fig. 5). Training always runs every unit this way, so gradients are the
paper's and every parameter takes part in every step (DistributedDataParallel
needs no unused-parameter search). At inference the block stops as soon as all
positions have halted (Alg. 2 line 11); sparse executors that skip the work at
inactive positions are in :mod:`sact_det.modeling.sparse`.

Batched images of different sizes are padded (bottom and right). Padded
positions are held at zero after every unit, and inside a unit after its first
convolution, so the 3x3 convolutions read zeros there, exactly as they read
their own zero padding for an image alone: each image's features and ponder
maps do not depend on what it is batched with.
"""
import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sact_det.config.modes import HALTING_TYPES
from sact_det.modeling.sact.act import HaltingState
from sact_det.modeling.sact.halting import HaltingBranch, masked_global_average, tile_average
from sact_det.utils.errors import NonFiniteOutputError

__all__ = ["StageOutput", "AdaptiveStage", "run_unit", "subsample_valid",
           "every_unit_evaluated", "check_finite"]

@contextlib.contextmanager
def every_unit_evaluated(module: nn.Module):
    """The adaptive blocks in ``module`` never stop early (Alg. 2 line 11
    skipped) inside this context.

    For export (:mod:`sact_det.apps.export`): tracing records Python control
    flow for the traced input only, so the early stop would be frozen into an
    exported model. Without it a block evaluates every unit, masked as in
    training (halted positions keep their values): the same outputs, no
    data-dependent branch."""
    stages = [m for m in module.modules() if isinstance(m, AdaptiveStage)]
    previous = [stage.early_stop for stage in stages]
    for stage in stages:
        stage.early_stop = False
    try:
        yield
    finally:
        for stage, value in zip(stages, previous):
            stage.early_stop = value


@dataclass
class StageOutput:
    """What one block returns besides its features.

    Maps are at the block's output resolution; ``valid`` marks the positions
    inside each image (the rest is padding added when batching).
    """

    features: Optional[torch.Tensor]  # [B, C, H, W], eq. (10); None once consumed (backbone)
    valid: torch.Tensor  # bool [B, 1, H, W]
    num_units_map: torch.Tensor  # int [B, H, W], N per position (eq. 7)
    ponder_map: Optional[torch.Tensor] = None  # float32 [B, H, W], rho per position (eq. 11)
    # Positions at which units 2..L were evaluated (index l - 2), recorded at
    # inference for FLOP accounting; units a block skipped entirely are absent.
    computed_masks: List[torch.Tensor] = field(default_factory=list)
    # FLOPs a sparse executor actually ran for the whole batch (sact_det.modeling.sparse).
    executed_flops: Optional[int] = None
    # bool scalar: every halting score of the block was finite (HaltingState.scores_finite).
    scores_finite: Optional[torch.Tensor] = None

    def ponder_cost(self) -> torch.Tensor:
        """Per-image ponder cost of the block, ``[B]``: the mean over positions (Alg. 2 line 37)."""
        return masked_global_average(self.ponder_map, self.valid[:, 0])

    def mean_units(self) -> torch.Tensor:
        """Per-image mean number of evaluated units, ``[B]``."""
        return masked_global_average(self.num_units_map.float(), self.valid[:, 0])


def subsample_valid(valid: Optional[torch.Tensor], stride: int) -> Optional[torch.Tensor]:
    """The valid mask after a layer of ``stride``: output position i reads input
    position ``stride * i``, so it is inside the image iff that one is (images
    are padded at the bottom and right; this is ``ceil(size / stride)``)."""
    return valid if valid is None or stride == 1 else valid[:, :, ::stride, ::stride]


def run_unit(unit: nn.Module, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """A residual unit on ``x`` whose padded positions are zero.

    ``valid``: bool ``[B, 1, H, W]`` at the unit's *input* resolution, or None
    (no padding: the unit's own forward). Otherwise, for Detectron2's
    ``BottleneckBlock``, the output of the first convolution and of the unit
    are zeroed at padded positions, so that the 3x3 convolution and the next
    unit read zeros there, as their own zero padding gives an image alone. A
    unit with its own ``forward_masked(x, valid)`` (the pre-activation unit of
    :mod:`sact_det.modeling.preact`) does the same its way.
    """
    if valid is None:
        return unit(x)
    forward_masked = getattr(unit, "forward_masked", None)
    if forward_masked is not None:
        return forward_masked(x, valid)
    out_valid = subsample_valid(valid, unit.stride)
    mid_valid = out_valid if unit.conv1.stride[0] == unit.stride else valid
    out = F.relu(unit.conv1(x))
    out = out * mid_valid.to(out.dtype)
    out = unit.conv3(F.relu(unit.conv2(out)))
    shortcut = unit.shortcut(x) if unit.shortcut is not None else x
    out = F.relu(out + shortcut)
    return out * out_valid.to(out.dtype)


class AdaptiveStage(nn.Module):
    """A block of residual units whose depth is chosen per image (ACT) or per position (SACT)."""

    def __init__(self, units: Sequence[nn.Module], halting_type: str = "sact",
                 eps: float = 0.01, halting_bias_init: float = -3.0, tile_size: int = 1,
                 halting_norm: Optional[Callable[[int], nn.Module]] = None, halting_padding: str = "zeros"):
        """
        Args:
            units: the residual units ``F^1 .. F^L``; the first may change
                resolution and channels and is always evaluated everywhere.
            halting_type: "sact" (eq. 14), "act" (eq. 6) or "none" (plain ResNet block).
            eps: epsilon of eq. (7).
            halting_bias_init: initial halting bias ``b^l`` (section 4.1: -3).
            tile_size: k > 1 shares SACT halting scores within k x k tiles
                (sec. 2.3), in training and in every execution mode.
            halting_norm, halting_padding: the halting branches' ``norm`` and
                ``padding`` (:class:`~sact_det.modeling.sact.halting.HaltingBranch`).
        """
        super().__init__()
        if halting_type not in HALTING_TYPES:
            raise ValueError(f"halting type must be one of {HALTING_TYPES}, got {halting_type!r}")
        if not units:
            raise ValueError("a block needs at least one residual unit")
        for index, unit in enumerate(units):
            self.add_module(str(index), unit)
        self.num_units = len(units)
        self.halting_type = halting_type
        self.eps = eps
        self.tile_size = tile_size
        # Alg. 2 line 11 at inference; switched off for export by every_unit_evaluated().
        self.early_stop = True
        self.out_channels = units[-1].out_channels
        self.stride = math.prod(u.stride for u in units)
        if halting_type != "none":
            # h^L = 1 (eq. 5): the last unit has no halting branch.
            self.halting = nn.ModuleList(
                HaltingBranch(u.out_channels, spatial=halting_type == "sact", bias_init=halting_bias_init,
                              norm=halting_norm, padding=halting_padding)
                for u in list(units)[:-1]
            )
        else:
            self.halting = None

    @property
    def units(self) -> List[nn.Module]:
        return [self._modules[str(i)] for i in range(self.num_units)]

    @property
    def adaptive(self) -> bool:
        return self.halting is not None

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> StageOutput:
        """
        Args:
            x: block input ``[B, C_in, H_in, W_in]``, zero at padded positions.
            valid: bool ``[B, 1, H_in, W_in]``, the positions inside each image at
                the block's *input* resolution, or None when no image is padded.
        """
        units = self.units
        x = run_unit(units[0], x, valid)  # the first unit is always computed (Alg. 2, l = 1)
        valid = subsample_valid(valid, units[0].stride)
        valid_map = valid if valid is not None else torch.ones(
            (x.shape[0], 1) + x.shape[2:], dtype=torch.bool, device=x.device)
        if not self.adaptive:
            for unit in units[1:]:
                x = run_unit(unit, x, valid)
            return StageOutput(x, valid_map, valid_map[:, 0].int() * self.num_units)

        state = HaltingState(valid_map, self.eps)
        output, computed_masks = None, []
        for index, unit in enumerate(units):
            if index > 0:
                if not self.training and self.early_stop and state.all_halted:
                    break  # Alg. 2 line 11
                if not self.training:
                    computed_masks.append(state.active)
                # Lines 13-16: evaluate at active positions, copy elsewhere (Fig. 5).
                x = torch.where(state.active, run_unit(unit, x, valid), x)
            score = None  # h^L = 1 (eq. 5)
            if index < self.num_units - 1:
                score = tile_average(self.halting[index](x, valid), self.tile_size, valid)
            contribution = state.update(score) * x  # eq. (10), float32
            output = contribution if output is None else output + contribution
        return StageOutput(
            features=output.to(x.dtype),
            valid=valid_map,
            num_units_map=state.num_units[:, 0],
            ponder_map=state.ponder_cost[:, 0],
            computed_masks=computed_masks,
            scores_finite=state.scores_finite,
        )


def check_finite(block: str, features: torch.Tensor, scores_finite: Optional[torch.Tensor] = None,
                 weights_finite: bool = True) -> None:
    """Raises :class:`~sact_det.utils.errors.NonFiniteOutputError` naming
    ``block`` (e.g. "block res3 of the feature extractor") when its features or
    halting scores hold NaN or infinity (broken weights), so that inference
    fails instead of reporting plausible numbers. One reduction (a sum) and
    one host sync per block; used at inference only.

    ``weights_finite`` False (the folded weights of a sparse executor hold NaN
    or infinity) counts as non-finite features: the masked dense computation
    gives NaN there, but oneDNN's fused ReLU turns NaN into 0, so the sparse
    path's output alone would not show it."""
    # One pass: any NaN or inf makes the float32 sum non-finite; a finite map sums
    # to inf only beyond 3e38 in magnitude, which is broken weights too.
    features_finite = torch.isfinite(features.sum(dtype=torch.float32))
    if not weights_finite:
        features_finite = torch.zeros_like(features_finite)
    scores_finite = features_finite.new_ones(()) if scores_finite is None else scores_finite
    if not (features_finite & scores_finite):
        what = " and ".join(name for name, ok in (("features", features_finite), ("halting scores", scores_finite))
                            if not ok)
        raise NonFiniteOutputError(f"{block} produced non-finite {what} (NaN or inf): the model weights "
                                   "(MODEL.WEIGHTS) are broken")
