"""Reading images: the extensions sact-det treats as images, and the one reader
(tools, visualiser, training and evaluation) that gives every image as 8-bit RGB.

Any bit depth and channel count is read or refused by name:

* 8-bit RGB, grayscale (L), 1-bit, palette (P), CMYK, YCbCr, ... : PIL's conversion to RGB;
* an alpha channel (LA, RGBA, PA, palette transparency, 2- and 4-channel files):
  composited on white;
* 16-bit (PNG, TIFF): the full 0-65535 range mapped onto 0-255;
* 32-bit integers: as 16-bit when the values fit in 0-65535, otherwise their
  own min-max range;
* floating point (TIFF): values in [0, 1] taken as intensities, others mapped
  from their min-max range; NaN or infinity is refused;
* files PIL cannot decode (e.g. 3-channel float TIFF) are read with OpenCV.
"""
import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sact_det.utils.errors import ImageReadError

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "read_image_rgb", "to_uint8"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I", "F")  # and "I;16", "I;16B", ...: one channel, 16/32-bit or float


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def to_uint8(values: np.ndarray, path: str = "image") -> np.ndarray:
    """``uint8`` intensities of an array of any integer, bool or float dtype (rules in the module docstring)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == bool:
        return values.astype(np.uint8) * 255
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise ImageReadError(f"cannot read image {path}: it contains NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:  # not intensities in [0, 1]: stretch the range
            values = (values - low) / max(high - low, 1e-12)
        return (values * 255).round().astype(np.uint8)
    if values.dtype.kind in "iu":
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 65535:  # 16-bit data (also in 32-bit containers)
            return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        stretched = (values.astype(np.float64) - low) / max(high - low, 1)
        return (stretched * 255).round().astype(np.uint8)
    raise ImageReadError(f"cannot read image {path}: pixel type {values.dtype} is not supported")


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``uint8`` RGB composited over white by ``uint8`` alpha."""
    weight = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * weight + 255 * (255 - weight) + 127) // 255).astype(np.uint8)


def _from_array(values: np.ndarray, path: str, channel_order: str = "RGB") -> np.ndarray:
    """RGB ``uint8`` from ``[H, W]`` or ``[H, W, C]`` pixels (C = 1-4, colour in ``channel_order``)."""
    values = to_uint8(values, path)
    if values.ndim == 2:
        values = values[..., None]
    channels = values.shape[2] if values.ndim == 3 else 0
    if channels not in (1, 2, 3, 4):
        raise ImageReadError(f"cannot read image {path}: {channels} channels (expected 1-4)")
    colour_channels = 1 if channels <= 2 else 3
    colour = values[..., :colour_channels]
    alpha = values[..., colour_channels] if channels in (2, 4) else None
    if colour_channels == 1:
        colour = np.repeat(colour, 3, axis=2)
    elif channel_order == "BGR":
        colour = colour[..., ::-1]
    return np.ascontiguousarray(colour if alpha is None else _on_white(colour, alpha))


def _read_with_opencv(path: str) -> np.ndarray:
    values = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if values is None:
        raise ImageReadError(f"cannot read image {path}: not an image file PIL or OpenCV can decode")
    return _from_array(values, path, channel_order="BGR")


def read_image_rgb(path: str) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of an image file of any bit depth and channel
    count, EXIF orientation applied. Raises
    :class:`~sact_det.utils.errors.ImageReadError` (an ``OSError``) naming the
    file when it is missing, truncated or not an image."""
    try:
        return _read(path)
    except ImageReadError:
        raise
    except Exception as e:  # PIL's and the OS's errors alike: missing, a directory, truncated, undecodable
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise ImageReadError(f"cannot read image {path}: {reason}") from e


def _read(path: str) -> np.ndarray:
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        return _read_with_opencv(path)
    with image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith(_HIGH_DEPTH_MODES):
            return _from_array(np.asarray(image), path)
        if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            return _from_array(np.asarray(image.convert("RGBA")), path)
        return np.asarray(image.convert("RGB"))
