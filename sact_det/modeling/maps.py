"""Ponder cost maps and the image grid.

A block's map has one cell per feature position; cell ``(i, j)`` of a map of
stride ``s`` covers the network-input pixels ``[s*i, s*i + s) x [s*j, s*j + s)``
(the last row/column may overhang the input, as feature maps round sizes up).
The network input is the image resized by the test-time resizing.
"""
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["total_ponder_map", "border_ratio", "map_to_image", "image_to_grid"]


def total_ponder_map(block_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Total ponder cost map: the per-block maps ``[H_k, W_k]`` resized (nearest)
    to the finest block's resolution and summed, as the official code does."""
    size = block_maps[0].shape[-2:]
    return sum(F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0]
               for m in block_maps)


def border_ratio(value_map: torch.Tensor) -> Optional[float]:
    """Mean of a map ``[h, w]`` on its outermost ring of cells (first and last
    row and column) divided by its mean on the interior: 1 when the border
    costs what the interior does; None for a map without interior (h or w < 3).
    Zero padding of the halting branch's 3x3 term can make it > 1 (issue 27)."""
    height, width = value_map.shape[-2:]
    if height < 3 or width < 3:
        return None
    value_map = value_map.double()
    interior = value_map[1:-1, 1:-1]
    ring_mean = (value_map.sum() - interior.sum()) / (height * width - interior.numel())
    return float(ring_mean / interior.mean())


def map_to_image(value_map: torch.Tensor, input_size: Tuple[int, int], image_size: Tuple[int, int],
                 stride: int) -> np.ndarray:
    """A grid map as float32 ``[H, W]`` over the original image (nearest neighbour:
    each cell keeps its value)."""
    cells = np.repeat(np.repeat(np.asarray(value_map), stride, axis=0), stride, axis=1)
    cells = cells[: input_size[0], : input_size[1]]
    rows = np.arange(image_size[0]) * input_size[0] // image_size[0]
    cols = np.arange(image_size[1]) * input_size[1] // image_size[1]
    return cells[rows][:, cols].astype(np.float32)


def image_to_grid(mask: np.ndarray, input_size: Tuple[int, int], grid_shape: Tuple[int, int],
                  stride: int) -> np.ndarray:
    """Share of each grid cell covered by a bool mask over the original image,
    float32 ``grid_shape`` (cells overhanging the input count only the input)."""
    height, width = input_size
    coverage = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    padded = np.zeros((grid_shape[0] * stride, grid_shape[1] * stride), np.float32)
    padded[:height, :width] = coverage
    inside = np.zeros_like(padded)
    inside[:height, :width] = 1
    cells = padded.reshape(grid_shape[0], stride, grid_shape[1], stride).sum((1, 3))
    area = inside.reshape(grid_shape[0], stride, grid_shape[1], stride).sum((1, 3))
    return cells / np.maximum(area, 1)
