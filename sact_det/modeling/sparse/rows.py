"""A block's feature map during sparse execution: positions as rows.

Through a block, features are the rows of an NHWC matrix ``[P, C]`` (``P = B
* H * W`` positions), which is also a channels-last ``[B, C, H, W]`` map.
Units gather the rows they need by index and write new rows back, or replace
the whole matrix; :class:`BlockRows` keeps what the halting branches read
current as rows change. Index tables use ``P`` as a sentinel for every
position outside the map or in the padding of a batched image.
"""
from typing import List, Optional, Tuple

import torch
from torch.nn import functional as F

from sact_det.modeling.sact.halting import masked_global_average, tile_ids
from sact_det.modeling.sparse.folding import FoldedHalting
from sact_det.modeling.sparse.kernels import conv

__all__ = ["MapLayout", "BlockRows", "chunk_rows"]

_CHUNK_BYTES = 8 << 20  # gathered rows (im2col, conv1 inputs) per chunk: bounds the extra memory
_KEEP_BYTES = 8 << 20  # a unit's new rows kept, in all, for the output accumulation (else gathered again)


def chunk_rows(row_bytes: int, minimum: int = 256) -> int:
    """Rows per chunk of gathered data of ``row_bytes`` each."""
    return max(minimum, _CHUNK_BYTES // row_bytes)


class MapLayout:
    """Index tables of a ``[B, H, W]`` map: each position's image and 3x3
    neighbours (the sentinel ``P`` outside the map and in the padding), and,
    for tiled execution, each tile's window."""

    def __init__(self, batch: int, height: int, width: int, valid: Optional[torch.Tensor], device):
        self.batch, self.height, self.width = batch, height, width
        self.num = num = batch * height * width
        self.valid = (valid.reshape(num) if valid is not None
                      else torch.ones(num, dtype=torch.bool, device=device))
        self.padded = valid is not None
        self.image_of = torch.arange(batch, device=device).repeat_interleave(height * width)
        self.count = self.valid.view(batch, -1).sum(1).clamp(min=1).float()
        index = torch.arange(num, device=device)
        if self.padded:
            index = torch.where(self.valid, index, num)
        self.index_map = F.pad(index.view(batch, height, width), (1, 1, 1, 1), value=num)
        taps = [self.index_map[:, dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)]
        table = torch.stack(taps, dim=-1).view(num, 9)
        self.neighbours = torch.cat([table, table.new_full((1, 9), num)])  # [P + 1, 9], row-major taps

    @property
    def valid_map(self) -> Optional[torch.Tensor]:
        """Bool ``[B, 1, H, W]`` of the positions inside the images, None without padding."""
        return self.valid.view(self.batch, 1, self.height, self.width) if self.padded else None

    def dilate(self, active: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the 3x3-dilated set of ``active`` inside the images, and for each
        active position the rows of its 9 neighbours in that set; the sentinel
        row ``len(dilated)`` outside)."""
        marked = torch.zeros(self.num + 1, dtype=torch.bool, device=active.device)
        marked[self.neighbours[active].flatten()] = True
        marked[self.num] = False
        dilated = torch.nonzero(marked).squeeze(1)
        row_of = torch.full((self.num + 1,), dilated.numel(), dtype=torch.long, device=active.device)
        row_of[dilated] = torch.arange(dilated.numel(), device=active.device)
        return dilated, row_of[self.neighbours[active]]

    def tiles(self, tile_size: int):
        """(each tile's ``(k + 2)^2`` window of flat indices with a one-position
        halo, the sentinel outside the images; each position's tile id; the
        number of tiles)."""
        k = tile_size
        tiles_h, tiles_w = -(-self.height // k), -(-self.width // k)
        halo = torch.full((self.batch, tiles_h * k + 2, tiles_w * k + 2), self.num, dtype=torch.long,
                          device=self.index_map.device)
        halo[:, :self.height + 2, :self.width + 2] = self.index_map
        windows = halo.unfold(1, k + 2, k).unfold(2, k + 2, k).reshape(-1, (k + 2) ** 2)
        return windows, tile_ids(self.batch, self.height, self.width, k, windows.device), windows.shape[0]


# [1, 10, 3, 3]: input channel t < 9 -> tap t (row-major); channel 9 (the pooled term's products) unused.
_ONE_HOT_TAPS = torch.cat([torch.eye(9).view(1, 9, 3, 3), torch.zeros(1, 1, 3, 3)], dim=1)


def _sum_of_neighbour_taps(products: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: at each position, the sum over the 3x3 taps t of tap t's
    product at the neighbour t points to (zero outside the map), from the
    product maps ``[B, 10, H, W]`` (nine taps row-major, then the pooled
    term's): the 3x3 term of eq. (14), as one 3x3 convolution with one-hot weights."""
    taps = _ONE_HOT_TAPS.to(device=products.device, dtype=products.dtype)
    return F.conv2d(products, taps, padding=1)[:, 0]


class BlockRows:
    """The rows ``[P, C]`` of a block's current map, with the per-image pooled
    means (``pool(x)`` of eqs. 6, 14) and the current halting branch's per-tap
    products kept up to date as units write rows."""

    def __init__(self, layout: MapLayout, rows: torch.Tensor, spatial: bool):
        self.layout = layout
        self.data = rows  # [P, C], the rows of a channels-last map
        # float32 [B, C]; None when stale (after a unit rewrote every row): only a
        # sparse unit after a dense one needs it, the dense units' halting does not.
        self.pooled: Optional[torch.Tensor] = None
        # Per-tap products of the halting 3x3 term, row ``P`` zero (padding, eq. 14).
        self.tap_products = (torch.zeros((layout.num + 1, 9), dtype=rows.dtype, device=rows.device)
                             if spatial else None)
        self._halting: Optional[FoldedHalting] = None  # the branch whose tap products writes keep current
        # This unit's new rows as (positions, rows) while they fit in _KEEP_BYTES; else None.
        self.written: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self._written_bytes = 0
        # Eq. (10), float32 [P, C]. The first unit's term p^1 x^1 waits in
        # _first_weight until a unit replaces x^1 (then x^1's memory becomes the
        # sum: no new map) or changes it in place (then it is summed before).
        self.output: Optional[torch.Tensor] = None
        self._first_weight: Optional[torch.Tensor] = None

    @property
    def keeps_input(self) -> bool:
        """Whether the current rows must outlive the next unit (the first unit's
        term of eq. 10 is not summed yet): the unit must not write over them."""
        return self._first_weight is not None

    def _sum_first_term(self, reuse: bool) -> None:
        """``output = p^1 x^1`` from the current rows (x^1); ``reuse``: in their memory."""
        weight, self._first_weight = self._first_weight[:, None], None
        if reuse and self.data.dtype == torch.float32:
            self.output = self.data.mul_(weight)
        else:
            self.output = self.data.float() * weight

    @property
    def map(self) -> torch.Tensor:
        """The rows as a channels-last ``[B, C, H, W]`` view."""
        lay = self.layout
        return self.data.view(lay.batch, lay.height, lay.width, -1).permute(0, 3, 1, 2)

    def replace(self, rows: torch.Tensor) -> None:
        """After a unit rewrote every row (into a new tensor or over the old rows)."""
        if self._first_weight is not None:
            self._sum_first_term(reuse=True)
        self.data, self.pooled, self.written = rows, None, None

    def begin_unit(self, halting: Optional[FoldedHalting]) -> None:
        """Before a sparse unit: record the rows it writes, keep tap products for ``halting``."""
        self._halting = halting if halting is not None and halting.taps is not None else None
        self.written, self._written_bytes = [], 0

    def write(self, positions: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> None:
        """New rows at ``positions`` (whose previous rows are ``old``)."""
        lay = self.layout
        if self._first_weight is not None:  # the rows change in place: sum the first term before
            self._sum_first_term(reuse=False)
        if self.pooled is not None:
            if lay.batch == 1:  # two column sums: no [A, C] temporary
                self.pooled[0] += (new.sum(0, dtype=torch.float32) - old.sum(0, dtype=torch.float32)) / lay.count[0]
            else:
                images = lay.image_of[positions]
                self.pooled.index_add_(0, images, (new.float() - old.float()) / lay.count[images, None])
        self.data.index_copy_(0, positions, new)
        if self._halting is not None:
            self.tap_products.index_copy_(0, positions, self._halting.tap_products(new))
        if self.written is not None:
            self._written_bytes += new.numel() * 4
            self.written = self.written + [(positions, new)] if self._written_bytes <= _KEEP_BYTES else None

    def halting_logits(self, halting: FoldedHalting, active: torch.Tensor,
                       dilated: Optional[torch.Tensor]) -> Tuple[torch.Tensor, int]:
        """Logits of eq. (14) (or 6) at the active positions, float32 ``[A]``,
        and the number of positions whose tap products were computed.

        After a unit that rewrote every row (``dilated`` None), one pass over
        the map gives the per-tap products and ``x W`` of the pooled term
        (``W pool(x) = mean(x W)``); the 3x3 term is then the sum of each
        position's neighbours' tap products, a one-hot 3x3 convolution of the
        nine product maps. After a sparse unit, the products of the rows it
        wrote are current; those of the ring around them (``dilated`` minus
        ``active``) are computed here, and the pooled term comes from the
        pooled means."""
        lay = self.layout
        if dilated is None:
            bias = halting.products_bias.to(self.data.dtype) if halting.products_bias is not None else None
            maps = conv(self.map, halting.products.to(self.data.dtype), bias)  # [B, 10, H, W] (ACT: [B, 1, H, W])
            if bias is not None and lay.padded:  # folded BN_l: the padding must read zero, as alone
                maps = maps * lay.valid_map.to(maps.dtype)
            global_logits = masked_global_average(maps[:, -1:].float(), lay.valid_map)[:, 0] + halting.offset_bias
            logits = global_logits[lay.image_of] if lay.batch > 1 else global_logits.expand(lay.num)
            if halting.taps is not None:
                logits = logits + _sum_of_neighbour_taps(maps).reshape(lay.num).float()
            return (logits if active.numel() == lay.num else logits[active]), lay.num
        if self.pooled is None:
            self.pooled = masked_global_average(self.map.float(), lay.valid_map)
        logits = halting.global_logit(self.pooled)[lay.image_of[active]]
        if halting.taps is None:
            return logits, 0
        is_active = torch.zeros(lay.num + 1, dtype=torch.bool, device=active.device)
        is_active[active] = True
        ring = dilated[~is_active[dilated]]
        self.tap_products.index_copy_(0, ring, halting.tap_products(self.data.index_select(0, ring)))
        tap_index = torch.arange(9, device=active.device)
        return logits + self.tap_products[lay.neighbours[active], tap_index].sum(1).float(), dilated.numel()

    def accumulate(self, active: torch.Tensor, weight: torch.Tensor) -> None:
        """``output += p^l x^l`` at the active positions (eq. 10). The first
        unit's term waits (see ``keeps_input``); later terms come from this
        unit's own new rows when they were kept, over the whole map when most
        positions are active, else gathered in chunks."""
        num, output = self.layout.num, self.output
        if output is None:  # the first unit: every position
            full = weight if active.numel() == num else weight.new_zeros(num).index_copy_(0, active, weight)
            self._first_weight = full
            return
        if self.written is not None and sum(p.numel() for p, _ in self.written) == active.numel():
            full = output.new_zeros(num).index_copy_(0, active, weight)
            for positions, new in self.written:
                output.index_add_(0, positions, new.float().mul_(full[positions, None]))
        elif 2 * active.numel() >= num:
            full = weight if active.numel() == num else output.new_zeros(num).index_copy_(0, active, weight)
            output.addcmul_(self.data, full[:, None])
        else:
            chunk = chunk_rows(self.data.shape[1] * 4)
            for start in range(0, active.numel(), chunk):
                part = active[start:start + chunk]
                rows = self.data.index_select(0, part).float()
                output.index_add_(0, part, rows.mul_(weight[start:start + chunk, None]))

    def block_output(self) -> torch.Tensor:
        """The block output of eq. (10) as rows ``[P, C]`` in the rows' dtype."""
        if self._first_weight is not None:  # only the first unit ran: its rows are no longer needed
            self._sum_first_term(reuse=True)
        return self.output.to(self.data.dtype)
