"""The classifier's dataset mapper and its augmentations (``INPUT.CLS``):

* training: a random crop of ``TRAIN_MIN_AREA``..1 of the image area with an
  aspect ratio in 3/4..4/3, resized to ``TRAIN_SIZE`` x ``TRAIN_SIZE``
  (:class:`RandomResizedCrop`, the standard ImageNet augmentation), then
  ``INPUT.RANDOM_FLIP``;
* evaluation: the shorter side resized to ``TEST_RESIZE``, then the central
  ``TEST_SIZE`` x ``TEST_SIZE`` crop (:class:`CenterCrop`; 224 of 256 is the
  official code's central 87.5 %).

Augmentations draw from numpy's global RNG, which the training loader seeds per
sample (:mod:`sact_det.data.sampling`): resumed runs see the same crops.
"""
import logging
import math

import numpy as np
import torch

from detectron2.data import transforms as T

from sact_det.data.images import read_image_rgb

__all__ = ["RandomResizedCrop", "CenterCrop", "ClassificationMapper", "classification_augmentations"]

logger = logging.getLogger("sact_det")


class RandomResizedCrop(T.Augmentation):
    """A random crop of ``scale`` (share of the image area) and ``ratio``
    (width / height, log-uniform), resized to ``size`` x ``size``; after ten
    draws that do not fit, the largest central crop of an allowed aspect ratio."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        super().__init__()
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def _box(self, height: int, width: int):
        area = height * width
        for _ in range(10):
            target = area * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            crop_w, crop_h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                return (int(np.random.randint(0, width - crop_w + 1)), int(np.random.randint(0, height - crop_h + 1)),
                        crop_w, crop_h)
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        crop_w, crop_h = (width, round(width / aspect)) if width / height <= aspect else (round(height * aspect), height)
        crop_w, crop_h = min(crop_w, width), min(crop_h, height)
        return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h

    def get_transform(self, image):
        height, width = image.shape[:2]
        x0, y0, crop_w, crop_h = self._box(height, width)
        return T.TransformList([T.CropTransform(x0, y0, crop_w, crop_h),
                                T.ResizeTransform(crop_h, crop_w, self.size, self.size)])


class CenterCrop(T.Augmentation):
    """The central ``size`` x ``size`` crop (the whole side where it is shorter)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_transform(self, image):
        height, width = image.shape[:2]
        crop_h, crop_w = min(self.size, height), min(self.size, width)
        return T.CropTransform((width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h)


def classification_augmentations(cfg, is_train: bool):
    sizes = cfg.INPUT.CLS
    if not is_train:
        return [T.ResizeShortestEdge(sizes.TEST_RESIZE, sizes.TEST_RESIZE * 100), CenterCrop(sizes.TEST_SIZE)]
    augmentations = [RandomResizedCrop(sizes.TRAIN_SIZE, scale=(sizes.TRAIN_MIN_AREA, 1.0))]
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                          vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augmentations


class ClassificationMapper:
    """Dataset dict (``file_name``, ``label``) -> model input (``image`` ``uint8
    [3, H, W]`` in ``INPUT.FORMAT``, ``label``, and the dict's other fields).
    Images are read by :func:`~sact_det.data.images.read_image_rgb`; one that
    cannot be read is named, and skipped in training (the loader takes
    another) or an error in evaluation (skipping would change the metric)."""

    def __init__(self, cfg, is_train: bool):
        self.is_train = is_train
        self.image_format = cfg.INPUT.FORMAT
        if self.image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR for the classifier, got {self.image_format!r}")
        self.augmentations = T.AugmentationList(classification_augmentations(cfg, is_train))

    def __call__(self, dataset_dict: dict):
        try:
            image = read_image_rgb(dataset_dict["file_name"])
        except OSError as e:  # missing, truncated or not an image
            message = f"could not read image {dataset_dict.get('file_name')!r}: {e}"
            if self.is_train:
                logger.warning(message + "; skipping it")
                return None
            raise OSError(message) from e
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        result = dict(dataset_dict, height=image.shape[0], width=image.shape[1])  # the image's own size
        result["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return result
