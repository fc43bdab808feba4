"""One residual unit at the active positions of a block (Alg. 2 lines 13-16).

Each function evaluates a stride-1 identity unit ``F^l`` where positions are
active, leaves the other rows as they are (Fig. 5), writes through
:class:`BlockRows` and returns ``(conv1 positions, conv2/conv3 positions)``
it computed, from which the executor counts the FLOPs it ran.
"""
from typing import Tuple

import torch

from sact_det.modeling.sparse.folding import FoldedUnit
from sact_det.modeling.sparse.kernels import conv_relu, linear_add, linear_relu
from sact_det.modeling.sparse.rows import BlockRows, chunk_rows

__all__ = ["dense_unit", "perforated_unit", "tiled_unit", "act_unit"]


def dense_unit(unit: FoldedUnit, rows: BlockRows, active: torch.Tensor) -> Tuple[int, int]:
    """The unit's convolutions on the whole map, kept at the active positions
    (cheaper than gathering when most positions are active)."""
    lay = rows.layout
    inactive = None
    if active.numel() < lay.num:
        is_active = torch.zeros(lay.num, dtype=torch.bool, device=active.device)
        is_active[active] = True
        inactive = torch.nonzero(~is_active).squeeze(1)
    kept = rows.data.index_select(0, inactive) if inactive is not None else None  # few rows
    new = unit.dense(rows.map, lay.valid_map, inplace=not rows.keeps_input)
    new_rows = new.permute(0, 2, 3, 1).reshape(lay.num, -1)  # a view: the map is channels-last
    if kept is not None:
        new_rows.index_copy_(0, inactive, kept)  # inactive positions keep their value
    rows.replace(new_rows)
    return lay.num, lay.num


def _conv1_rows(unit: FoldedUnit, data: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``relu(conv1)`` at ``positions`` (gathered in chunks), with a last zero
    row: the 3x3 convolution's zero padding for neighbours outside the set."""
    chunk = chunk_rows(data.shape[1] * data.element_size())
    pieces = [linear_relu(data.index_select(0, positions[start:start + chunk]), unit.w1, unit.conv1.bias)
              for start in range(0, positions.numel(), chunk)]
    return torch.cat(pieces + [data.new_zeros((1, unit.bottleneck))])


def perforated_unit(unit: FoldedUnit, rows: BlockRows, active: torch.Tensor, dilated: torch.Tensor,
                    neighbour_rows: torch.Tensor) -> Tuple[int, int]:
    """The unit at the ``active`` rows only (sec. 2.3, Fig. 5): the first 1x1
    convolution on the 3x3-dilated set, the 3x3 convolution as im2col of the
    gathered neighbours, the last 1x1 on the active rows. conv1 reads every row
    it needs first; then chunks of active rows, which are disjoint, read their
    own residual and are written back at once, so no chunk reads a row another
    one wrote. Gathers are chunked to bound memory."""
    data = rows.data
    y = _conv1_rows(unit, data, dilated)
    chunk = chunk_rows(9 * unit.bottleneck * data.element_size())
    for start in range(0, active.numel(), chunk):
        positions = active if chunk >= active.numel() else active[start:start + chunk]
        taps = neighbour_rows[start:start + chunk]
        columns = y.index_select(0, taps.flatten()).view(taps.shape[0], -1)  # im2col of the 3x3 taps
        z = linear_relu(columns, unit.w2, unit.conv2.bias)
        old = data.index_select(0, positions)  # the residual: the unit's input at the position itself
        rows.write(positions, linear_add(z, old, unit.w3, unit.conv3.bias).relu_(), old)
    return dilated.numel(), active.numel()


def tiled_unit(unit: FoldedUnit, rows: BlockRows, active: torch.Tensor, windows: torch.Tensor,
               tile_size: int) -> Tuple[int, int]:
    """Dense convolutions on the gathered ``(k + 2)^2`` windows (one-position
    halo) of the tiles with active positions, kept at the active positions of
    the tiles' k x k interiors. As in :func:`perforated_unit`, conv1 reads
    every window first; then chunks of tiles, whose interiors are disjoint,
    are finished and written back."""
    data, lay, k = rows.data, rows.layout, tile_size
    is_active = torch.zeros(lay.num + 1, dtype=torch.bool, device=active.device)
    is_active[active] = True
    tiles, side = windows.shape[0], k + 2
    gathered = windows.flatten()
    outside = gathered == lay.num
    y = _conv1_rows(unit, data, gathered.masked_fill(outside, 0))[:-1]  # 1x1 on the windows
    y[outside] = 0  # outside the images: the 3x3 convolution's zero padding
    y = y.view(tiles, side, side, -1).permute(0, 3, 1, 2)  # channels-last NCHW view
    interiors = windows.view(tiles, side, side)[:, 1:-1, 1:-1].reshape(tiles, -1)
    chunk = chunk_rows(k * k * data.shape[1] * data.element_size(), minimum=1)  # tiles
    conv2 = unit.conv2
    for start in range(0, tiles, chunk):
        z = conv_relu(y[start:start + chunk], conv2.weight, conv2.bias, (1, 1), (0, 0), (1, 1), 1)  # k x k
        z = z.permute(0, 2, 3, 1).reshape(-1, unit.bottleneck)
        positions = interiors[start:start + chunk].reshape(-1)
        keep = is_active[positions]
        positions = positions[keep]
        old = data.index_select(0, positions)
        rows.write(positions, linear_add(z[keep], old, unit.w3, unit.conv3.bias).relu_(), old)
    return tiles * side * side, tiles * k * k


def act_unit(unit: FoldedUnit, rows: BlockRows, images: torch.Tensor) -> Tuple[int, int]:
    """ACT (Alg. 1): the unit densely on the still-active images."""
    lay = rows.layout
    area = lay.height * lay.width
    old = rows.data.view(lay.batch, area, -1).index_select(0, images)  # [I, H*W, C]
    maps = old.view(images.numel(), lay.height, lay.width, -1).permute(0, 3, 1, 2)
    valid = lay.valid_map.index_select(0, images) if lay.padded else None
    new = unit.dense(maps, valid).permute(0, 2, 3, 1).reshape(-1, old.shape[-1])
    positions = (images[:, None] * area + torch.arange(area, device=images.device)).reshape(-1)
    keep = lay.valid[positions]  # not the padding of the images
    rows.write(positions[keep], new[keep], old.reshape(-1, old.shape[-1])[keep])
    return positions.numel(), positions.numel()
