"""The training data as the model sees it: images with their boxes and class
names (``tools/visualize_data.py``).

* ``annotation``: the dataset's images as stored, with every annotation of
  ``DATASETS.TRAIN`` (Detectron2's ``Visualizer.draw_dataset_dict``).
* ``dataloader``: what the trainer's data loader yields, after resizing and
  flipping (``INPUT.*``), with the boxes that survived the augmentation.
"""
import itertools
import os
from typing import Iterator, List, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.utils.visualizer import Visualizer

from sact_det.data import check_datasets_exist
from sact_det.data.images import read_image_rgb
from sact_det.utils.files import atomic_path

__all__ = ["SOURCES", "annotation_images", "dataloader_images", "browse_dataset"]

SOURCES = ("annotation", "dataloader")


def annotation_images(cfg) -> Iterator[Tuple[str, np.ndarray]]:
    """(file name, RGB image with its annotations drawn) for every image of DATASETS.TRAIN."""
    for name in cfg.DATASETS.TRAIN:
        metadata = MetadataCatalog.get(name)
        for record in DatasetCatalog.get(name):
            image = read_image_rgb(record["file_name"])  # an error naming the file when it is not an image
            drawn = Visualizer(image, metadata).draw_dataset_dict(record).get_image()
            yield record["file_name"], drawn


def dataloader_images(cfg) -> Iterator[Tuple[str, np.ndarray]]:
    """(file name, RGB image with its boxes drawn) as the trainer's data loader
    yields them: augmented, in the loader's (random) order, without end."""
    from sact_det.engine.trainer import SACTTrainer  # the trainer's own loader and mapper

    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    classes = metadata.get("thing_classes")
    for batch in SACTTrainer.build_train_loader(cfg):
        for item in batch:
            image = convert_image_to_rgb(item["image"].permute(1, 2, 0).numpy(), cfg.INPUT.FORMAT)
            instances = item["instances"]
            labels = [classes[c] if classes else str(c) for c in instances.gt_classes.tolist()]
            masks = instances.gt_masks if instances.has("gt_masks") else None
            drawn = Visualizer(image, metadata).overlay_instances(
                boxes=instances.gt_boxes, labels=labels, masks=masks).get_image()
            yield item["file_name"], drawn


def browse_dataset(cfg, source: str, output_dir: str, num_images: int = 20,
                   progress: bool = True) -> List[str]:
    """Writes ``num_images`` pictures of ``source`` (:data:`SOURCES`) to
    ``output_dir`` as ``<index>_<image name>.jpg``; returns their paths."""
    if source not in SOURCES:
        raise ValueError(f"--source: expected one of {SOURCES}, got {source!r}")
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN names no dataset to show")
    check_datasets_exist(cfg.DATASETS.TRAIN)
    images = annotation_images(cfg) if source == "annotation" else dataloader_images(cfg)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for index, (file_name, drawn) in enumerate(tqdm(itertools.islice(images, num_images), total=num_images,
                                                    desc=source, unit="image", disable=not progress)):
        stem = os.path.splitext(os.path.basename(file_name))[0]
        path = os.path.join(output_dir, f"{index:04d}_{stem}.jpg")
        with atomic_path(path) as temporary:
            Image.fromarray(drawn).save(temporary, format="JPEG", quality=92)
        written.append(path)
    return written
