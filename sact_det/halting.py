"""The halting branch: a residual unit's halting score ``h^l = H^l(x^l)``.

* ACT, eq. (6): ``h = sigmoid(W pool(x) + b)``, one score per image.
* SACT, eq. (14): ``h = sigmoid(W~ * x + W pool(x) + b)``, one score per
  position; ``W~ *`` is a 3x3 convolution to one channel (Fig. 6).

Both share one module: the SACT branch is the ACT branch plus the spatial 3x3
term, so a SACT branch whose 3x3 weights are zero is exactly ACT (section 2.3).
Global average pooling is taken over the valid (non-padding) positions of each
image so that batching images of different sizes does not change the scores.
"""
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["HaltingBranch", "masked_global_average", "tile_average"]


def masked_global_average(x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """``pool(x)`` of eqs. (6) and (14): mean over the valid positions, ``[B, C]``."""
    if valid is None:
        return x.mean(dim=(2, 3))
    valid = valid.to(x.dtype)
    return (x * valid).sum(dim=(2, 3)) / valid.sum(dim=(2, 3)).clamp(min=1)


class HaltingBranch(nn.Module):
    """Halting score of one residual unit (eq. 6 for ACT, eq. 14 for SACT)."""

    def __init__(self, channels: int, spatial: bool, bias_init: float = -3.0,
                 weight_std: float = 1e-3):
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
        """
        super().__init__()
        self.spatial = spatial
        self.global_logit = nn.Linear(channels, 1, bias=False)  # W pool(x)
        self.bias = nn.Parameter(torch.full((1,), float(bias_init)))  # b
        nn.init.normal_(self.global_logit.weight, std=weight_std)
        if spatial:
            self.spatial_logit = nn.Conv2d(channels, 1, 3, padding=1, bias=False)  # W~ * x
            nn.init.normal_(self.spatial_logit.weight, std=weight_std)
        else:
            self.spatial_logit = None

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Returns float32 halting scores, ``[B, 1, H, W]`` (SACT) or ``[B, 1, 1, 1]`` (ACT)."""
        pooled = masked_global_average(x, valid)
        logit = (self.global_logit(pooled).float() + self.bias.float())[:, :, None, None]
        if self.spatial_logit is not None:
            logit = logit + self.spatial_logit(x).float()
        return torch.sigmoid(logit)


def tile_average(score: torch.Tensor, tile_size: int, valid: Optional[torch.Tensor]) -> torch.Tensor:
    """Halting scores shared within ``k x k`` tiles (sec. 2.3, tiling): each
    tile's mean over its valid positions, broadcast back. ``[B, 1, H, W]``; a
    per-image score (ACT) or ``k <= 1`` is returned unchanged."""
    if tile_size <= 1 or score.shape[-2:] == (1, 1):
        return score
    height, width = score.shape[-2:]
    weight = valid.to(score.dtype) if valid is not None else torch.ones_like(score)
    total = F.avg_pool2d(score * weight, tile_size, ceil_mode=True, divisor_override=1)
    count = F.avg_pool2d(weight, tile_size, ceil_mode=True, divisor_override=1).clamp(min=1)
    mean = (total / count).repeat_interleave(tile_size, dim=2).repeat_interleave(tile_size, dim=3)
    return mean[..., :height, :width]
