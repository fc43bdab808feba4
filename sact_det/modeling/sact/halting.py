"""The halting branch: a residual unit's halting score ``h^l = H^l(x^l)``.

* ACT, eq. (6): ``h = sigmoid(W pool(x) + b)``, one score per image.
* SACT, eq. (14): ``h = sigmoid(W~ * x + W pool(x) + b)``, one score per
  position; ``W~ *`` is a 3x3 convolution to one channel (Fig. 6).

Both share one module: the SACT branch is the ACT branch plus the spatial 3x3
term, so a SACT branch whose 3x3 weights are zero is exactly ACT (section 2.3).
Global average pooling is taken over the valid (non-padding) positions of each
image so that batching images of different sizes does not change the scores.

Two options beyond eq. (14), both from the authors' code or issue 27:

* ``norm`` (``MODEL.SACT.HALTING_NORM``): the official ``get_halting_proba_conv``
  batch-normalises before each term, ``h = sigmoid(W~ * BN_l(x) + W BN_g(pool(x)) + b)``
  (``local_norm``, ``global_norm``; ACT: ``global_norm`` only). Their checkpoints need it.
* ``padding`` (``MODEL.SACT.HALTING_PADDING``): the 3x3 term reads zeros outside
  the image (the paper's and TensorFlow's "SAME") or the image's border cells
  repeated ("replicate").
"""
from typing import Callable, Optional

import torch
from torch import nn

from sact_det.config.modes import HALTING_PADDINGS

__all__ = ["HaltingBranch", "masked_global_average", "replicate_into_padding", "set_test_halting_offset",
           "tile_ids", "tile_mean", "tile_average"]


def masked_global_average(x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """``pool(x)`` of eqs. (6) and (14), and every other per-image mean of a map:
    the mean of ``x`` ``[B, ..., H, W]`` over the valid positions (``valid`` bool,
    broadcastable to ``x``; None: all), ``[B, ...]``."""
    if valid is None:
        return x.mean(dim=(-2, -1))
    valid = valid.to(x.dtype)
    return (x * valid).sum(dim=(-2, -1)) / valid.sum(dim=(-2, -1)).clamp(min=1)


def replicate_into_padding(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` with the padding of each image (bottom and right of
    its ``valid`` rectangle, bool ``[B, 1, H, W]``) filled with the image's
    nearest border cell, so that a replicate-padded 3x3 convolution of the batch
    reads at each image's border what it reads for the image alone."""
    batch, channels, height, width = x.shape
    heights = valid[:, 0, :, 0].sum(1).clamp(min=1)  # the valid area is a top-left rectangle
    widths = valid[:, 0, 0, :].sum(1).clamp(min=1)
    rows = torch.minimum(torch.arange(height, device=x.device)[None], heights[:, None] - 1)  # [B, H]
    cols = torch.minimum(torch.arange(width, device=x.device)[None], widths[:, None] - 1)  # [B, W]
    x = x.gather(2, rows[:, None, :, None].expand(batch, channels, height, width))
    return x.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


class HaltingBranch(nn.Module):
    """Halting score of one residual unit (eq. 6 for ACT, eq. 14 for SACT)."""

    def __init__(self, channels: int, spatial: bool, bias_init: float = -3.0,
                 weight_std: float = 1e-3, norm: Optional[Callable[[int], nn.Module]] = None,
                 padding: str = "zeros"):
        """
        Args:
            channels: channels of the unit output ``x^l``.
            spatial: True for SACT (eq. 14), False for ACT (eq. 6).
            bias_init: initial ``b^l``. Section 4.1 uses -3, i.e. initially
                ``1 / sigmoid(-3) ~ 21`` units are evaluated, which protects the
                last units of a block from dying early in training.
            weight_std: std of the random initial weights. Small, so that the
                initial halting scores stay close to ``sigmoid(b^l)`` whatever the
                feature scale of the pretrained network.
            norm: None (eq. 14 as printed), or a factory ``channels -> module``
                of a batch norm over the channels of a ``[B, C, H, W]`` map (e.g.
                ``BatchNorm2d``, Detectron2's ``FrozenBatchNorm2d``): the authors'
                branch, ``local_norm`` on ``x`` before the 3x3 term and
                ``global_norm`` on ``pool(x)`` (as a ``[B, C, 1, 1]`` map: the
                batch norm of the pooled features over the batch) before ``W``.
            padding: "zeros" or "replicate", the 3x3 term's padding.
        """
        super().__init__()
        if padding not in HALTING_PADDINGS:
            raise ValueError(f"halting padding must be one of {HALTING_PADDINGS}, got {padding!r}")
        self.spatial = spatial
        self.padding = padding
        self.global_logit = nn.Linear(channels, 1, bias=False)  # W pool(x)
        self.bias = nn.Parameter(torch.full((1,), float(bias_init)))  # b
        nn.init.normal_(self.global_logit.weight, std=weight_std)
        if spatial:
            self.spatial_logit = nn.Conv2d(channels, 1, 3, padding=1, bias=False, padding_mode=padding)  # W~ * x
            nn.init.normal_(self.spatial_logit.weight, std=weight_std)
        else:
            self.spatial_logit = None
        self.global_norm = norm(channels) if norm is not None else None  # BN_g of pool(x)
        self.local_norm = norm(channels) if norm is not None and spatial else None  # BN_l of x
        # Added to the logit at inference only (MODEL.SACT.TEST_HALTING_OFFSET): a
        # test-time compute knob, > 0 halts earlier. Not a parameter: checkpoints
        # do not carry it.
        self.test_offset = 0.0

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Returns float32 halting scores, ``[B, 1, H, W]`` (SACT) or ``[B, 1, 1, 1]`` (ACT).

        ``x``: the unit output ``[B, C, H, W]``, zero at the padded positions
        that ``valid`` (bool ``[B, 1, H, W]``, None: none) marks."""
        pooled = masked_global_average(x, valid)  # over each image's own positions
        if self.global_norm is not None:
            pooled = self.global_norm(pooled[:, :, None, None])[:, :, 0, 0]
        bias = self.bias.float() + (0.0 if self.training else self.test_offset)
        logit = (self.global_logit(pooled).float() + bias)[:, :, None, None]
        if self.spatial_logit is not None:
            logit = logit + self.spatial_logit(self._spatial_input(x, valid)).float()
        return torch.sigmoid(logit)

    def _spatial_input(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """What the 3x3 term convolves: ``BN_l(x)`` (or ``x``) with each image's
        padding as its own padding mode would give it alone: zeros (the norm's
        output is not zero there), or its border cells."""
        if self.local_norm is not None:
            x = self.local_norm(x)
            if valid is not None and self.padding == "zeros":
                x = x * valid.to(x.dtype)
        if valid is not None and self.padding == "replicate":
            x = replicate_into_padding(x, valid)
        return x


def set_test_halting_offset(module: nn.Module, offset: float) -> int:
    """Sets the test-time logit offset of every halting branch in ``module``
    (the feature extractor's and any other's); returns how many it set."""
    branches = [m for m in module.modules() if isinstance(m, HaltingBranch)]
    for branch in branches:
        branch.test_offset = float(offset)
    return len(branches)


def tile_ids(batch: int, height: int, width: int, tile_size: int, device=None) -> torch.Tensor:
    """The ``k x k`` tile of every position of a ``[B, 1, H, W]`` map, flattened:
    int64 ``[B * H * W]``, tiles numbered image by image, row-major."""
    tiles_h, tiles_w = -(-height // tile_size), -(-width // tile_size)
    ids = torch.arange(batch * tiles_h * tiles_w, device=device).view(batch, tiles_h, tiles_w)
    ids = ids.repeat_interleave(tile_size, 1).repeat_interleave(tile_size, 2)
    return ids[:, :height, :width].reshape(-1)


def tile_mean(scores: torch.Tensor, tiles: torch.Tensor, num_tiles: int) -> torch.Tensor:
    """Halting scores shared within tiles (sec. 2.3, tiling): each score replaced
    by the mean of the scores of its tile. ``scores`` float ``[N]``, ``tiles``
    int64 ``[N]`` (< ``num_tiles``); differentiable."""
    total = scores.new_zeros(num_tiles).index_add(0, tiles, scores)
    count = scores.new_zeros(num_tiles).index_add(0, tiles, torch.ones_like(scores))
    return (total / count.clamp(min=1))[tiles]


def tile_average(score: torch.Tensor, tile_size: int, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`tile_mean` on a ``[B, 1, H, W]`` score map: each tile's mean over
    its valid positions, at those positions. A per-image score (ACT) or
    ``k <= 1`` is returned unchanged."""
    if tile_size <= 1 or score.shape[-2:] == (1, 1):
        return score
    batch, _, height, width = score.shape
    tiles = tile_ids(batch, height, width, tile_size, score.device)
    num_tiles = batch * -(-height // tile_size) * -(-width // tile_size)
    flat = score.reshape(-1)
    if valid is None:
        return tile_mean(flat, tiles, num_tiles).view(score.shape)
    inside = torch.nonzero(valid.reshape(-1)).squeeze(1)
    shared = tile_mean(flat[inside], tiles[inside], num_tiles)
    return flat.index_put((inside,), shared).view(score.shape)
