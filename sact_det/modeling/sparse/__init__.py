"""Sparse SACT inference: no computation where positions have halted.

The dense path of :mod:`sact_det.modeling.sact.adaptive_stage` (like the official code)
evaluates every unit everywhere and discards the result at inactive positions,
so it saves FLOPs on paper only. Here a block runs as section 2.3 describes,
on all images of a batch at once:

* ``perforated``: each unit's first 1x1 convolution runs on the 3x3-dilated set
  of active positions, its 3x3 and last 1x1 convolutions on the active
  positions only (gathered rows, matrix products, scattered back). Inactive
  positions keep their value (Fig. 5); the block stops once every position has
  halted (Alg. 2 line 11).
* ``tiled``: halting scores are shared within k x k tiles, and each unit runs as
  a dense convolution on the gathered active tiles with a one-position halo.
* ACT evaluates whole images, densely, and only the images still active.

Modules: :mod:`.folding` (batch norm folded into channels-last and row-matrix
weights), :mod:`.rows` (the map as rows, index tables, what the halting
branches read), :mod:`.units` (one unit at the active positions, each way),
:mod:`.executor` (a block: Algorithm 2 over its units; the stem and blocks).
Every executor counts the FLOPs it executes for a block, first unit included
(``StageOutput.executed_flops``); for ``perforated`` they equal the accounting
of :mod:`sact_det.modeling.flops`.
"""
from sact_det.config.modes import SPARSE_EXECUTIONS
from sact_det.modeling.sparse.executor import SparseBackboneExecutor, SparseStageExecutor
from sact_det.modeling.sparse.folding import FoldedConv, FoldedHalting, FoldedUnit, fold_conv_norm

__all__ = ["SPARSE_EXECUTIONS", "SparseBackboneExecutor", "SparseStageExecutor", "FoldedConv",
           "FoldedHalting", "FoldedUnit", "fold_conv_norm"]
