"""Fused convolution and matrix-product kernels for inference.

On CPUs, PyTorch ships oneDNN's fused operators (the ones ``torch.compile``
emits): a convolution or matrix product with its bias, ReLU or residual
addition applied while the result is still in cache, instead of one more pass
over memory per elementwise step. Elsewhere (CUDA, a build without oneDNN)
the same functions run as plain PyTorch operators. Both sparse execution and
the tuned dense baseline of the benchmark use them.
"""
import torch
from torch.nn import functional as F

__all__ = ["fused_available", "conv", "conv_relu", "conv_add_relu", "conv_add_relu_", "linear", "linear_relu",
           "linear_add"]

_MKLDNN = torch.ops.mkldnn
_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(_MKLDNN, "_convolution_pointwise")


def fused_available(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused operators can run on ``x``: not when oneDNN is
    switched off (``torch.backends.mkldnn.flags(enabled=False)``, as the tests
    do to compare the plain path with the fused one)."""
    return (_HAVE_ONEDNN and torch.backends.mkldnn.enabled and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16))


def conv(x: torch.Tensor, weight: torch.Tensor, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
         groups: int = 1) -> torch.Tensor:
    """``conv2d(x) + bias`` (oneDNN's operator is faster than ``F.conv2d`` and
    ``F.linear`` for the few output channels of the halting products)."""
    if fused_available(x):
        return _MKLDNN._convolution_pointwise(x, weight, bias, list(padding), list(stride), list(dilation),
                                              groups, "none", [None], "")
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride, padding, dilation,
              groups: int) -> torch.Tensor:
    """``relu(conv2d(x) + bias)``."""
    if fused_available(x):
        return _MKLDNN._convolution_pointwise(x, weight, bias, list(padding), list(stride), list(dilation),
                                              groups, "relu", [None], "")
    return F.relu_(F.conv2d(x, weight, bias, stride, padding, dilation, groups))


def conv_add_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor,
                  stride, padding, dilation, groups: int) -> torch.Tensor:
    """``relu(conv2d(x) + bias + residual)``: a residual unit's last convolution."""
    if fused_available(x):
        return _MKLDNN._convolution_pointwise.binary(x, residual, weight, bias, list(padding), list(stride),
                                                     list(dilation), groups, "add", 1.0, "relu", [None], "")
    return F.relu_(F.conv2d(x, weight, bias, stride, padding, dilation, groups).add_(residual))


def conv_add_relu_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor,
                   stride, padding, dilation, groups: int) -> torch.Tensor:
    """As :func:`conv_add_relu`, written into ``residual`` (returned). No new
    map is allocated: on this CPU that alone makes a unit's last convolution
    about 10 % faster (fresh memory costs page faults), and a dense network
    needs one map less."""
    if fused_available(x) and residual.is_contiguous(memory_format=torch.channels_last):
        return _MKLDNN._convolution_pointwise_.binary(residual, x, weight, bias, list(padding), list(stride),
                                                      list(dilation), groups, "add", 1.0, "relu", [None], "")
    return F.relu_(residual.add_(F.conv2d(x, weight, bias, stride, padding, dilation, groups)))


def linear(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.T`` (oneDNN's matrix product is up to 2.5x faster than
    ``F.linear`` for the few output columns of the halting products)."""
    if fused_available(rows):
        return _MKLDNN._linear_pointwise(rows, weight, None, "none", [None], "")
    return F.linear(rows, weight)


def linear_relu(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``relu(rows @ weight.T + bias)``, ``weight`` ``[out, in]``."""
    if fused_available(rows):
        return _MKLDNN._linear_pointwise(rows, weight, bias, "relu", [None], "")
    return F.relu_(F.linear(rows, weight, bias))


def linear_add(rows: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.T + bias + residual``."""
    if fused_available(rows):
        return _MKLDNN._linear_pointwise.binary(rows, residual, weight, bias, "add")
    return torch.addmm(residual, rows, weight.t()).add_(bias)
