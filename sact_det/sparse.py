"""Sparse SACT inference: no computation where positions have halted.

The dense path of :mod:`sact_det.adaptive_stage` (like the official code)
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

For speed, batch norm is folded into the convolutions, and features stay rows
of an NHWC matrix through a block (channels-last tensors between blocks), so
no unit changes the memory layout. The halting branch's 3x3 term is computed
as nine per-tap products on the dilated set, summed at the active positions.
Every executor counts the FLOPs it executes for a block, first unit included
(``StageOutput.executed_flops``); for ``perforated`` they equal the accounting
of :mod:`sact_det.flops`.
"""
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d

from .act import act_step
from .adaptive_stage import AdaptiveStage, StageOutput
from .flops import conv_output_size, dense_unit_flops, perforated_unit_flops

__all__ = ["fold_conv_norm", "FoldedConv", "FoldedUnit", "SparseStageExecutor", "SparseBackboneExecutor"]

_CHUNK_BYTES = 8 << 20  # gathered rows (im2col, conv1 inputs) per chunk: bounds the extra memory
_KEEP_BYTES = 8 << 20  # a unit's new rows kept, in all, for the output accumulation (else gathered again)


def fold_conv_norm(conv: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` followed by its frozen or eval-mode batch norm."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    norm = getattr(conv, "norm", None)
    if norm is None:
        return weight, bias
    if not isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
        raise ValueError(f"sparse execution folds batch norm into the convolutions; {type(norm).__name__} "
                         "cannot be folded (MODEL.RESNETS.NORM must be FrozenBN, BN or SyncBN)")
    scale = (norm.weight * torch.rsqrt(norm.running_var + norm.eps)).detach()
    shift = (norm.bias - norm.running_mean * scale).detach()
    return weight * scale.view(-1, 1, 1, 1), bias * scale + shift


class FoldedConv:
    """A convolution with its batch norm folded, channels-last weights."""

    def __init__(self, conv: nn.Conv2d):
        weight, self.bias = fold_conv_norm(conv)
        self.weight = weight.contiguous(memory_format=torch.channels_last)
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride, conv.padding, conv.dilation, conv.groups)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FoldedUnit:
    """A Detectron2 ``BottleneckBlock`` with folded batch norm: a dense
    channels-last form and, for stride-1 identity units, row-matrix weights."""

    def __init__(self, unit: nn.Module):
        self.conv1, self.conv2, self.conv3 = (FoldedConv(c) for c in (unit.conv1, unit.conv2, unit.conv3))
        self.shortcut = FoldedConv(unit.shortcut) if unit.shortcut is not None else None
        self.bottleneck = self.conv2.weight.shape[0]
        self.sparse = (self.shortcut is None and unit.stride == 1 and self.conv2.groups == 1
                       and self.conv2.dilation == (1, 1))
        self.w3 = self.conv3.weight[:, :, 0, 0].t().contiguous()  # [Cb, C]
        if self.sparse:
            self.w1 = self.conv1.weight[:, :, 0, 0].t().contiguous()  # [C, Cb]
            # im2col layout: (tap row-major, input channel) -> output channel.
            self.w2 = self.conv2.weight.permute(2, 3, 1, 0).reshape(9 * self.bottleneck, -1).contiguous()

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        return F.relu_(out.add_(self.shortcut(x) if self.shortcut is not None else x))

    def dense_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """The unit on a channels-last map, written into the rows ``out``
        ``[B*H*W, C]``, which may be ``x``'s own rows (identity units update them
        in place). The last 1x1 convolution accumulates onto the residual rows,
        so no third full-size map is held."""
        z = F.relu_(self.conv2(F.relu_(self.conv1(x))))
        z = z.permute(0, 2, 3, 1).reshape(-1, self.bottleneck)
        if self.shortcut is not None:
            out.copy_(self.shortcut(x).permute(0, 2, 3, 1).reshape(out.shape))
        elif out.data_ptr() != x.data_ptr():
            out.copy_(x.permute(0, 2, 3, 1).reshape(out.shape))
        out.addmm_(z, self.w3).add_(self.conv3.bias).relu_()


def _neighbour_table(batch: int, height: int, width: int, device) -> torch.Tensor:
    """``[P + 1, 9]`` flat indices of the 3x3 neighbours of every position
    (row-major taps), the sentinel ``P`` outside the map and for the sentinel."""
    num = batch * height * width
    index = torch.arange(num, device=device).view(batch, height, width)
    padded = F.pad(index, (1, 1, 1, 1), value=num)
    taps = [padded[:, dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)]
    table = torch.stack(taps, dim=-1).view(num, 9)
    return torch.cat([table, table.new_full((1, 9), num)])


def _dilate(active: torch.Tensor, neighbours: torch.Tensor, num: int):
    """(the 3x3-dilated set of ``active``, and for each active position the rows
    of its 9 neighbours in that set; the sentinel row ``len(dilated)`` outside)."""
    marked = torch.zeros(num + 1, dtype=torch.bool, device=active.device)
    marked[neighbours[active].flatten()] = True
    marked[num] = False
    dilated = torch.nonzero(marked).squeeze(1)
    row_of = torch.full((num + 1,), dilated.numel(), dtype=torch.long, device=active.device)
    row_of[dilated] = torch.arange(dilated.numel(), device=active.device)
    return dilated, row_of[neighbours[active]]


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
        if execution not in ("perforated", "tiled"):
            raise ValueError(f"sparse execution must be 'perforated' or 'tiled', got {execution!r}")
        if execution == "tiled" and stage.tile_size < 2:
            raise ValueError("tiled execution needs MODEL.SACT.TILE_SIZE >= 2")
        self.stage, self.execution, self.max_active = stage, execution, max_active
        self.units = [FoldedUnit(u) for u in stage.units]
        if stage.halting_type == "sact" and not all(u.sparse for u in self.units[1:]):
            raise ValueError("sparse execution needs stride-1, ungrouped, undilated units after the first")
        self.halting = [self._fold_halting(branch) for branch in stage.halting or []]
        self._versions = self._weight_versions(stage)

    @staticmethod
    def _fold_halting(branch):
        """3x3 taps ``[9, C]`` (None for ACT), global weights ``[C]`` and bias."""
        taps = None
        if branch.spatial_logit is not None:  # [9, C]: F.linear's layout, much faster than [C, 9] here
            taps = branch.spatial_logit.weight.detach()[0].flatten(1).t().contiguous()
        return taps, branch.global_logit.weight.detach()[0].float(), branch.bias.detach()[0].float()

    @staticmethod
    def _weight_versions(stage):
        return tuple((t.data_ptr(), t._version) for t in list(stage.parameters()) + list(stage.buffers()))

    def is_current(self) -> bool:
        """Whether the stage's weights are still those this executor folded."""
        return self._weight_versions(self.stage) == self._versions

    # --- one unit: each updates ``rows`` in place and returns the rows it rewrote ---------
    @staticmethod
    def _dense_unit(unit: FoldedUnit, rows, inactive, batch, height, width):
        """The unit's convolutions on the whole map, kept at the active positions
        (cheaper than gathering when most positions are active)."""
        num, channels = batch * height * width, rows.shape[1]
        kept = rows[inactive] if inactive is not None else None  # few rows: the unit is dense
        unit.dense_into(rows[:num].view(batch, height, width, channels).permute(0, 3, 1, 2), rows[:num])
        if kept is not None:
            rows.index_copy_(0, inactive, kept)  # inactive positions keep their value

    @staticmethod
    def _perforated_unit(unit: FoldedUnit, rows, active, dilated, neighbour_rows, changes):
        """The unit at the ``active`` rows only (sec. 2.3, Fig. 5). conv1 reads
        every row it needs first; then chunks of active rows, which are disjoint,
        read their own residual and are written back at once, so no chunk reads
        a row another one wrote. Gathers are chunked to bound memory."""
        y = rows.new_empty((dilated.numel() + 1, unit.bottleneck))
        chunk = max(256, _CHUNK_BYTES // (rows.shape[1] * rows.element_size()))
        for start in range(0, dilated.numel(), chunk):  # 1x1 on the dilated set
            part = dilated[start:start + chunk]
            torch.addmm(unit.conv1.bias, rows[part], unit.w1, out=y[start:start + part.numel()]).relu_()
        y[-1] = 0  # the 3x3 convolution's zero padding
        chunk = max(256, _CHUNK_BYTES // (9 * unit.bottleneck * rows.element_size()))
        for start in range(0, active.numel(), chunk):
            positions = active if chunk >= active.numel() else active[start:start + chunk]
            columns = y[neighbour_rows[start:start + chunk]].flatten(1)  # im2col of the 3x3 taps
            z = torch.addmm(unit.conv2.bias, columns, unit.w2).relu_()
            old = rows[positions]  # the residual: the unit's input at the position itself
            new = torch.addmm(unit.conv3.bias, z, unit.w3).add_(old).relu_()
            changes(positions, new, old, offset=start)

    def _tiled_unit(self, unit: FoldedUnit, rows, windows, outside, is_active, changes):
        """Dense convolutions on gathered ``(k + 2)^2`` windows (one-position halo),
        kept at the active positions of the tiles' k x k interiors. As in
        :meth:`_perforated_unit`, conv1 reads every window first; then chunks of
        tiles, whose interiors are disjoint, are finished and written back."""
        tiles, k = windows.shape[0], self.stage.tile_size
        side, channels = k + 2, rows.shape[1]
        gathered = windows.flatten()
        y = rows.new_empty((gathered.numel(), unit.bottleneck))
        chunk = max(256, _CHUNK_BYTES // (channels * rows.element_size()))
        for start in range(0, gathered.numel(), chunk):  # 1x1 on the windows, gathers chunked
            part = gathered[start:start + chunk]
            torch.addmm(unit.conv1.bias, rows[part], unit.w1, out=y[start:start + part.numel()]).relu_()
        y[outside.flatten()] = 0  # outside the map: the 3x3 convolution's zero padding
        y = y.view(tiles, side, side, -1).permute(0, 3, 1, 2)  # channels-last NCHW view
        interiors = windows.view(tiles, side, side)[:, 1:-1, 1:-1].reshape(tiles, -1)
        chunk = max(1, _CHUNK_BYTES // (k * k * channels * rows.element_size()))
        for start in range(0, tiles, chunk):
            z = F.relu_(F.conv2d(y[start:start + chunk], unit.conv2.weight, unit.conv2.bias))  # valid: k x k
            z = z.permute(0, 2, 3, 1).reshape(-1, unit.bottleneck)
            positions = interiors[start:start + chunk].reshape(-1)
            keep = is_active[positions]
            positions = positions[keep]
            old = rows[positions]
            changes(positions, torch.addmm(unit.conv3.bias, z[keep], unit.w3).add_(old).relu_(), old)

    @staticmethod
    def _act_unit(unit: FoldedUnit, rows, images, is_active, batch, height, width, changes):
        """ACT: the active images, densely."""
        channels, area = rows.shape[1], height * width
        old = rows[:batch * area].view(batch, height, width, channels)[images]
        new = unit.dense(old.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(-1, channels)
        positions = (images[:, None] * area + torch.arange(area, device=rows.device)).reshape(-1)
        keep = is_active[positions]  # not the padding of the images
        changes(positions[keep], new[keep], old.reshape(-1, channels)[keep])

    # --- the block ---------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> StageOutput:
        stage = self.stage
        executed = dense_unit_flops(stage.units[0], tuple(x.shape[-2:]))[0] * x.shape[0]
        x = x.contiguous(memory_format=torch.channels_last)
        batch = x.shape[0]
        first = stage.units[0]
        height, width = conv_output_size(first.conv2, conv_output_size(first.conv1, tuple(x.shape[-2:])))
        channels, num, device, dtype = stage.out_channels, batch * height * width, x.device, x.dtype
        padded = valid is not None
        if not padded:
            valid = torch.ones((batch, 1, height, width), dtype=torch.bool, device=device)
        rows = x.new_empty((num + 1, channels))  # positions as rows; the last is a zero sentinel
        self.units[0].dense_into(x, rows[:num])  # the first unit: dense (Alg. 2, l = 1)
        rows[num] = 0
        del x
        image_of = torch.arange(batch, device=device).repeat_interleave(height * width)
        flat_valid = valid.reshape(num)
        count = flat_valid.view(batch, -1).sum(1).clamp(min=1).float()

        def pooled_sum_of_rows():  # pool(x) of eqs. (6), (14), as per-image sums
            pooled = rows[:num].float() * flat_valid[:, None] if padded else rows[:num].float()
            return pooled.view(batch, -1, channels).sum(1)

        pooled_sum = pooled_sum_of_rows()
        neighbours = _neighbour_table(batch, height, width, device)
        spatial = stage.halting_type == "sact"
        tiled = spatial and self.execution == "tiled"
        shared_scores = spatial and stage.tile_size > 1  # halting scores shared within tiles
        if shared_scores:
            windows, window_outside, tile_of = self._tile_tables(batch, height, width, device)
        # Per-tap products of the halting 3x3 term; row ``num`` stays zero (padding).
        tap_products = torch.zeros((num + 1, 9), dtype=dtype, device=device) if spatial else None

        active = torch.nonzero(flat_valid).squeeze(1)
        cumulative = torch.zeros(num, device=device)
        remainder = torch.ones(num, device=device)
        ponder = torch.zeros(num, device=device)
        num_units = torch.zeros(num, dtype=torch.int32, device=device)
        output = torch.zeros((num, channels), device=device)  # float32 accumulation, eq. (10)
        computed_masks: List[torch.Tensor] = []
        for index, (unit, module) in enumerate(zip(self.units, stage.units)):
            taps = self.halting[index][0] if index < stage.num_units - 1 and spatial else None
            whole_map = True  # the unit rewrote (or kept) every row: no incremental bookkeeping
            if index > 0:
                if active.numel() == 0:
                    break  # Alg. 2 line 11
                is_active = torch.zeros(num + 1, dtype=torch.bool, device=device)
                is_active[active] = True
                computed_masks.append(is_active[:num].view(batch, 1, height, width))

                # This unit's new rows as (offset in ``active``, rows), while they are
                # consecutive slices of ``active`` and fit in _KEEP_BYTES; else None.
                fresh: Optional[List[Tuple[int, torch.Tensor]]] = []

                def changes(positions, new, old, offset=None):
                    """Writes new rows; keeps the pooled sums and the tap products current.
                    ``offset``: ``positions`` is ``active[offset:offset + len(positions)]``."""
                    nonlocal fresh
                    if fresh is not None:
                        kept = sum(r.numel() for _, r in fresh) + new.numel()
                        fresh = fresh + [(offset, new)] if offset is not None and kept * 4 <= _KEEP_BYTES else None
                    if batch == 1:
                        pooled_sum[0] += new.float().sum(0) - old.float().sum(0)
                    else:
                        images = image_of[positions]
                        pooled_sum.index_add_(0, images, new.float())
                        pooled_sum.index_add_(0, images, old.float(), alpha=-1)
                    rows.index_copy_(0, positions, new)
                    if taps is not None:
                        tap_products.index_copy_(0, positions, F.linear(new, taps.to(dtype)))

                if not spatial:
                    images = torch.unique(image_of[active])
                    self._act_unit(unit, rows, images, is_active, batch, height, width, changes)
                    positions = images.numel() * height * width
                    executed += perforated_unit_flops(module, positions, positions)
                    whole_map = False
                elif active.numel() >= self.max_active * num:
                    inactive = None if active.numel() == num else torch.nonzero(~is_active[:num]).squeeze(1)
                    self._dense_unit(unit, rows, inactive, batch, height, width)
                    pooled_sum = pooled_sum_of_rows()
                    executed += perforated_unit_flops(module, num, num)
                else:
                    dilated, neighbour_rows = _dilate(active, neighbours, num)
                    if tiled:
                        tiles = torch.unique(tile_of[active])
                        self._tiled_unit(unit, rows, windows[tiles], window_outside[tiles], is_active, changes)
                        # conv1 on each tile with its halo, conv2 and conv3 on its interior
                        executed += tiles.numel() * perforated_unit_flops(
                            module, stage.tile_size ** 2, (stage.tile_size + 2) ** 2)
                    else:
                        self._perforated_unit(unit, rows, active, dilated, neighbour_rows, changes)
                        executed += perforated_unit_flops(module, active.numel(), dilated.numel())
                    whole_map = False
            if index < stage.num_units - 1:
                score = self._global_logit(index, pooled_sum / count[:, None], image_of[active])
                executed += 2 * channels * torch.unique(image_of[active]).numel()
                if spatial:
                    if whole_map:
                        tap_products[:num] = F.linear(rows[:num], taps.to(dtype))
                        executed += 2 * 9 * channels * num
                    else:  # the active rows' products are current: add those of the ring around them
                        ring = dilated[~is_active[dilated]]
                        tap_products.index_copy_(0, ring, F.linear(rows[ring], taps.to(dtype)))
                        executed += 2 * 9 * channels * dilated.numel()
                    tap_index = torch.arange(9, device=device)
                    score = score + tap_products[neighbours[active], tap_index].sum(1).float()
                score = torch.sigmoid(score)
                if shared_scores:
                    score = self._tile_mean(score, tile_of[active])
            else:
                score = torch.ones(active.numel(), device=device)  # h^L = 1, eq. (5)
            step = act_step(cumulative[active], remainder[active], score, stage.eps)  # lines 18-34
            self._accumulate(output, rows, active, step.weight, num, fresh if index > 0 else None)
            ponder[active] += step.ponder_increment
            num_units[active] += 1
            remainder[active] = step.remainder
            cumulative[active] = step.cumulative_score
            active = active[step.continuing]
        features = output.to(dtype).view(batch, height, width, channels).permute(0, 3, 1, 2)
        return StageOutput(features=features, valid=valid, num_units_map=num_units.view(batch, height, width),
                           ponder_map=ponder.view(batch, height, width), computed_masks=computed_masks,
                           executed_flops=executed)

    @staticmethod
    def _accumulate(output, rows, active, weight, num, fresh):
        """output += p^l x^l at the active rows (eq. 10); whole map when all are
        active; from the unit's own new rows when they were kept (``fresh``: all
        of ``active`` in slices), else gathered in chunks."""
        if active.numel() == num:
            output.addcmul_(rows[:num], weight[:, None])
            return
        if fresh and sum(r.shape[0] for _, r in fresh) == active.numel():
            for offset, new in fresh:
                end = offset + new.shape[0]
                output.index_add_(0, active[offset:end], new.float().mul_(weight[offset:end, None]))
            return
        chunk = max(256, _CHUNK_BYTES // (rows.shape[1] * 4))
        for start in range(0, active.numel(), chunk):
            part = active[start:start + chunk]
            output.index_add_(0, part, rows[part].float().mul_(weight[start:start + chunk, None]))

    def _global_logit(self, index, pooled, images):
        """``W pool(x) + b`` of eqs. (6) and (14) for the active positions' images."""
        _, global_weight, bias = self.halting[index]
        return (pooled @ global_weight + bias)[images]

    def _tile_tables(self, batch, height, width, device):
        """Each tile's ``(k + 2)^2`` window of flat indices (sentinel outside the
        map) and outside flags; each position's tile id."""
        k = self.stage.tile_size
        tiles_h, tiles_w = -(-height // k), -(-width // k)
        num = batch * height * width
        padded = torch.full((batch, tiles_h * k + 2, tiles_w * k + 2), num, dtype=torch.long, device=device)
        padded[:, 1:height + 1, 1:width + 1] = torch.arange(num, device=device).view(batch, height, width)
        windows = padded.unfold(1, k + 2, k).unfold(2, k + 2, k).reshape(-1, (k + 2) ** 2)
        tile_of = torch.arange(batch * tiles_h * tiles_w, device=device).view(batch, tiles_h, tiles_w)
        tile_of = tile_of.repeat_interleave(k, 1).repeat_interleave(k, 2)[:, :height, :width].reshape(-1)
        return windows, windows == num, tile_of

    @staticmethod
    def _tile_mean(score, tile_ids):
        """Scores shared within tiles: the mean over each tile's active positions."""
        total = torch.zeros(int(tile_ids.max()) + 1, device=score.device).index_add_(0, tile_ids, score)
        count = torch.zeros_like(total).index_add_(0, tile_ids, torch.ones_like(score))
        return total[tile_ids] / count[tile_ids]


class SparseBackboneExecutor:
    """The stem (folded, channels-last) and one :class:`SparseStageExecutor` per block."""

    def __init__(self, stem: nn.Module, stages, execution: str, max_active: float = 0.8):
        self.execution, self.max_active = execution, max_active
        self._stem = stem
        self.stem_conv = FoldedConv(stem.conv1)
        self._stem_versions = SparseStageExecutor._weight_versions(stem)
        self.stages = [SparseStageExecutor(stage, execution, max_active) for stage in stages]

    def is_current(self, execution: str, max_active: float) -> bool:
        return (execution == self.execution and max_active == self.max_active
                and all(s.is_current() for s in self.stages)
                and SparseStageExecutor._weight_versions(self._stem) == self._stem_versions)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.stem_conv(x.contiguous(memory_format=torch.channels_last)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
