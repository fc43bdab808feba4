"""Reading images: the extensions sact-det treats as images, and a reader
that gives every image as 8-bit RGB."""
import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "read_image_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def read_image_rgb(path: str) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB of any PIL-readable image: EXIF orientation
    applied, grayscale expanded, transparency composited on white."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return np.asarray(image.convert("RGB"))
