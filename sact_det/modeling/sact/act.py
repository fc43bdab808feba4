"""Adaptive Computation Time math for residual blocks, pure PyTorch.

Figurnov et al., "Spatially Adaptive Computation Time for Residual Networks",
CVPR 2017, sections 2.2-2.3. Notation follows the paper: halting scores ``h^l``
(eqs. 4-6, 14), number of evaluated units ``N`` (eq. 7), remainder ``R`` (eq. 8),
halting distribution ``p^l`` (eq. 9), block output (eq. 10) and ponder cost
``rho = N + R`` (eq. 11).

Two equivalent forms are provided:

* :func:`halting_distribution` evaluates eqs. (7)-(11) in closed form from all
  halting scores of a block at once (analysis, tests).
* :class:`HaltingState` is the incremental form of Algorithms 1 and 2: it is
  updated once per residual unit, so a block never stores all unit outputs and
  can stop as soon as every position has halted. With a single position per
  image (or per proposal) it is ACT (Alg. 1); with one position per
  feature-map cell it is SACT (Alg. 2).
"""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

__all__ = ["HaltingResult", "halting_distribution", "ACTStep", "act_step", "HaltingState"]


def _check_eps(eps: float) -> None:
    if not 0.0 < eps < 1.0:
        raise ValueError(f"ACT epsilon must satisfy 0 < eps < 1 (eq. 7), got {eps}")


@dataclass
class HaltingResult:
    """Closed-form ACT quantities for one block; ``S`` is any batch/spatial shape."""

    distribution: torch.Tensor  # p^l, eq. (9), shape [L, *S], sums to 1 over l
    num_units: torch.Tensor  # N, eq. (7), int64, shape S, in 1..L
    remainder: torch.Tensor  # R, eq. (8), shape S, in [0, 1]
    ponder_cost: torch.Tensor  # rho = N + R, eq. (11), shape S


def halting_distribution(halting_scores: torch.Tensor, eps: float = 0.01) -> HaltingResult:
    """Eqs. (7)-(11) from the halting scores of the first ``L - 1`` units.

    Args:
        halting_scores: ``[L - 1, *S]`` scores ``h^1 .. h^{L-1}`` in [0, 1]; the
            last unit's score ``h^L = 1`` (eq. 5) is appended here.
        eps: the epsilon of eq. (7).

    The gradient of ``N`` is ignored (it is an integer); the gradient of the
    ponder cost with respect to ``h^l`` is therefore -1 for ``l < N`` and 0
    otherwise, eq. (12).
    """
    _check_eps(eps)
    h = torch.cat([halting_scores, halting_scores.new_ones((1,) + halting_scores.shape[1:])])
    num_total = h.shape[0]
    cumsum = h.cumsum(dim=0)
    # Eq. (7): the first unit whose cumulative score reaches 1 - eps. The last
    # unit always qualifies because h^L = 1; argmax returns the first maximum.
    reached = (cumsum >= 1.0 - eps).to(torch.uint8)
    n_index = reached.argmax(dim=0)  # zero-based N - 1
    unit_index = torch.arange(num_total, device=h.device).view(-1, *([1] * (h.dim() - 1)))
    before_n = unit_index < n_index
    remainder = 1.0 - (h * before_n).sum(dim=0)  # eq. (8)
    distribution = torch.where(before_n, h, torch.zeros_like(h))  # eq. (9), l < N
    distribution = torch.where(unit_index == n_index, remainder.unsqueeze(0), distribution)
    num_units = n_index + 1
    return HaltingResult(distribution, num_units, remainder, num_units.to(h.dtype) + remainder)


class ACTStep(NamedTuple):
    cumulative_score: torch.Tensor  # c after this unit
    continuing: torch.Tensor  # bool: still active after this unit (c < 1 - eps)
    weight: torch.Tensor  # p^l of this unit's output, eq. (9)
    ponder_increment: torch.Tensor  # 1, plus R when halting here (lines 25, 31)
    remainder: torch.Tensor  # R after this unit (line 28)


def act_step(cumulative_score: torch.Tensor, remainder: torch.Tensor, halting_score: torch.Tensor,
             eps: float) -> ACTStep:
    """Lines 24-32 of Alg. 2 for positions evaluated at this unit (elementwise)."""
    total = cumulative_score + halting_score  # line 24
    continuing = total < 1.0 - eps  # line 26
    zero = torch.zeros_like(halting_score)
    return ACTStep(
        cumulative_score=total,
        continuing=continuing,
        weight=torch.where(continuing, halting_score, remainder),  # lines 27 / 30
        ponder_increment=1.0 + torch.where(continuing, zero, remainder),  # lines 25 / 31
        remainder=remainder - torch.where(continuing, halting_score, zero),  # line 28
    )


class HaltingState:
    """Per-position state of Algorithm 2 (lines 3-9), updated once per unit.

    The one implementation of the algorithm's bookkeeping: the dense masked
    blocks (training and ``EXECUTION dense``), the sparse executors and the
    ACT box head all update it. Positions are the elements of a tensor of any
    shape ``S``: the cells of a ``[B, 1, H, W]`` map for SACT, one per image or
    per proposal for ACT (Alg. 1). Positions that start inactive (padding of
    batched images) never contribute: their ponder cost and unit count stay zero.

    All bookkeeping is float32 so that mixed-precision training does not round
    the cumulative sums that decide halting (eq. 7).
    """

    def __init__(self, active: torch.Tensor, eps: float = 0.01):
        """
        Args:
            active: bool, shape ``S``: the positions that take part (Alg. 2 line 4).
            eps: the epsilon of eq. (7).
        """
        _check_eps(eps)
        self.eps = eps
        self.active = active
        zeros = torch.zeros(active.shape, dtype=torch.float32, device=active.device)
        self.cumulative_score = zeros  # c, line 5
        self.remainder = torch.ones_like(zeros)  # R, line 6
        self.ponder_cost = zeros  # rho, line 8
        self.num_units = torch.zeros(active.shape, dtype=torch.int32, device=active.device)
        # False once a halting score was NaN or infinite: eq. (7) would silently
        # halt there (NaN < 1 - eps is false), so callers must be able to tell.
        self.scores_finite = torch.ones((), dtype=torch.bool, device=active.device)

    def update(self, halting_score: Optional[torch.Tensor],
               positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Lines 18-34 of Alg. 2 for one residual unit; returns the weights
        ``p^l`` of the unit's output in the block output (eq. 10).

        Two forms of the same update:

        * ``positions`` None (masked, differentiable): ``halting_score``
          broadcasts to ``S``; the returned weights have shape ``S`` and are zero
          at inactive positions.
        * ``positions``: flat indices (into ``S`` flattened) of the currently
          active positions, in any order; ``halting_score`` has one value per
          index and so do the returned weights. Used by the sparse executors,
          which only evaluate the active positions.

        ``halting_score`` None is the last unit of a block (``h^L = 1``, eq. 5).
        """
        active = self.active

        def read(t):
            return t if positions is None else t.reshape(-1)[positions]

        def write(t, new):  # new values at the active positions, the old ones elsewhere
            if positions is None:
                return torch.where(active, new, t)
            return t.reshape(-1).index_put((positions,), new).view(t.shape)

        shape = self.cumulative_score.shape if positions is None else positions.shape
        if halting_score is None:
            h = torch.ones(shape, device=self.active.device)
        else:
            h = halting_score.float().expand(shape)
            # One reduction: a NaN or inf anywhere makes the sum non-finite (scores lie in [0, 1]).
            self.scores_finite = self.scores_finite & torch.isfinite(h.sum())
        step = act_step(read(self.cumulative_score), read(self.remainder), h, self.eps)
        self.ponder_cost = write(self.ponder_cost, read(self.ponder_cost) + step.ponder_increment)
        self.num_units = write(self.num_units, read(self.num_units) + 1)
        self.remainder = write(self.remainder, step.remainder)
        self.cumulative_score = write(self.cumulative_score, step.cumulative_score)
        self.active = write(self.active, step.continuing)
        if positions is None:
            return torch.where(active, step.weight, torch.zeros_like(step.weight))
        return step.weight

    def active_positions(self) -> torch.Tensor:
        """Flat indices of the active positions (for the ``positions`` form of :meth:`update`)."""
        return torch.nonzero(self.active.reshape(-1)).squeeze(1)

    @property
    def all_halted(self) -> bool:
        """Alg. 2 line 11: the block can stop once no position is active."""
        return not bool(self.active.any())
