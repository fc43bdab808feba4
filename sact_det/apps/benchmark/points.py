"""Operating points: a benchmark input and halting branches calibrated to a
share of the dense FLOPs."""
from typing import Callable, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from sact_det.data.synthetic import render_image
from sact_det.modeling.report import build_reports
from sact_det.modeling.sact.halting import set_test_halting_offset

__all__ = ['benchmark_image', 'set_halting_profile', 'set_head_halting_profile', 'flops_pct', 'head_flops_pct', 'calibrate']


def benchmark_image(cfg, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A normalised ``[1, 3, H, W]`` synthetic image (objects on a background)."""
    image, _, _ = render_image(np.random.RandomState(seed), height, width, max_objects=5)
    tensor = torch.as_tensor(image.transpose(2, 0, 1).copy()).float()  # BGR, as Detectron2 reads
    if cfg.INPUT.FORMAT == "RGB":
        tensor = tensor.flip(0)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    return ((tensor - mean) / std)[None]


@torch.no_grad()
def set_halting_profile(backbone, x: torch.Tensor, sharpness: float = 2.0) -> None:
    """Halting branches that depend on the 3x3 local mean activation, standardised
    with each block's output statistics on this image: ``logit = b0 - sharpness * z``
    (more computation where activations are strong). This gives spatially
    coherent active regions, as trained models have, on random weights; the
    operating point is then set by :func:`calibrate`."""
    set_test_halting_offset(backbone, 0.0)
    features = backbone.stem(x)
    for stage in backbone.stages:
        features = stage(features).features  # dense, with the current halting
        if not stage.adaptive:
            continue
        local = F.avg_pool2d(features.mean(dim=1, keepdim=True), 3, 1, 1, count_include_pad=False)
        mu, sigma = float(local.mean()), float(local.std()) + 1e-6
        for branch in stage.halting:
            channels = branch.global_logit.in_features
            branch.global_logit.weight.zero_()
            if branch.spatial_logit is not None:
                branch.spatial_logit.weight.fill_(-sharpness / (sigma * 9 * channels))
            else:  # ACT: the image's mean activation
                branch.global_logit.weight.fill_(-sharpness / (sigma * channels))
            branch.bias.fill_(sharpness * mu / sigma)


@torch.no_grad()
def set_head_halting_profile(model, inputs, sharpness: float = 2.0) -> None:
    """The ACT box head's halting on random weights: each proposal's score
    depends on its mean activation after the unit, standardised over the
    proposals of ``inputs`` (``logit = b0 - sharpness * z``)."""
    head = model.roi_heads.res5
    pooled = []
    hooks = [branch.register_forward_pre_hook(lambda m, args: pooled.append(args[0].mean((1, 2, 3))))
             for branch in head.halting]
    set_test_halting_offset(head, -40.0)  # every unit on every proposal while recording
    execution, model.roi_heads.execution = model.roi_heads.execution, "dense"
    try:
        model(inputs)
    finally:
        model.roi_heads.execution = execution
        for hook in hooks:
            hook.remove()
    for branch, means in zip(head.halting, pooled):
        mu, sigma = float(means.mean()), float(means.std()) + 1e-6
        branch.global_logit.weight.fill_(-sharpness / (sigma * branch.global_logit.in_features))
        branch.bias.fill_(sharpness * mu / sigma)
    set_test_halting_offset(head, 0.0)


@torch.no_grad()
def flops_pct(backbone, x: torch.Tensor) -> float:
    size = tuple(x.shape[-2:])
    _, outputs = backbone.forward_with_sact(x, [size])
    return build_reports(backbone, outputs, [size])[0].flops_pct


@torch.no_grad()
def head_flops_pct(model, inputs) -> float:
    report = model(inputs)[0]["sact"]
    return 100.0 * report.box_head_flops / report.box_head_dense_flops


def calibrate(module, measure: Callable[[], float], target_pct: float, steps: int = 14) -> Tuple[float, float]:
    """The test-time halting offset of ``module``'s branches (higher: earlier
    halting) whose ``measure()`` (FLOPs %) is closest to ``target_pct``, by
    bisection; returns (offset, reached percentage) and leaves it applied."""
    low, high = -30.0, 30.0
    best = (float("inf"), 0.0, float("nan"))
    for _ in range(steps):
        mid = (low + high) / 2
        set_test_halting_offset(module, mid)
        pct = measure()
        if abs(pct - target_pct) < best[0]:
            best = (abs(pct - target_pct), mid, pct)
        low, high = (mid, high) if pct > target_pct else (low, mid)
    set_test_halting_offset(module, best[1])
    return best[1], best[2]
