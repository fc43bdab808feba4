"""Classification datasets in the image-folder layout (``<root>/<class>/<image>``,
classes in sorted order: ImageNet's and torchvision's ``ImageFolder``'s):

* ``imagenet_train`` / ``imagenet_val``: ``$DETECTRON2_DATASETS/imagenet/{train,val}/<wnid>/*.JPEG``
  (the validation images sorted into class folders, as for torchvision);
* ``synthetic_cls_train`` / ``synthetic_cls_val`` / ``synthetic_cls_val_heldout``:
  the built-in synthetic set (:mod:`.synthetic_cls`), generated on first use;
* any folder named in ``DATASETS.IMAGE_FOLDERS``.

Dataset dicts are ``{"file_name", "label", "image_id"}``, listed when a run
loads the dataset; the metadata has ``classes`` (the folder names),
``image_root`` and ``evaluator_type`` "classification".
"""
import logging
import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from sact_det.data.datasets import datasets_root
from sact_det.data.images import is_image_file
from sact_det.data.synthetic_cls import (CLS_DATASET_VERSION, classification_dataset_version,
                                         generate_classification_dataset)
from sact_det.utils.errors import InputFileNotFoundError, InputValueError
from sact_det.utils.files import one_at_a_time

__all__ = ["SYNTHETIC_CLS_SPLITS", "IMAGENET_SPLITS", "IMAGE_FOLDERS_SOURCE", "image_folder_classes",
           "image_folder_dicts", "register_image_folder", "register_imagenet", "register_synthetic_cls",
           "default_synthetic_cls_root", "ensure_synthetic_cls", "register_image_folders",
           "register_classification_datasets", "is_classification_dataset"]

logger = logging.getLogger("sact_det")

SYNTHETIC_CLS_SPLITS = {"synthetic_cls_train": "train", "synthetic_cls_val": "val",
                        "synthetic_cls_val_heldout": "val_heldout"}
IMAGENET_SPLITS = {"imagenet_train": "train", "imagenet_val": "val"}
IMAGE_FOLDERS_SOURCE = "DATASETS.IMAGE_FOLDERS"  # metadata "source" of the datasets registered from the config
EVALUATOR_TYPE = "classification"


def image_folder_classes(root: str) -> List[str]:
    """The class names of an image folder: its sub-directories, sorted."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def image_folder_dicts(root: str, name: str = None) -> List[dict]:
    """Dataset dicts of the images under ``root/<class>/`` (sorted; image files
    by extension, see :func:`~sact_det.data.images.is_image_file`), labelled by
    the class's index in :func:`image_folder_classes`. An error names the
    folder when it does not exist or holds no image."""
    what = f"dataset {name!r}: " if name else ""
    if not os.path.isdir(root):
        raise InputFileNotFoundError(f"{what}image folder {root!r} does not exist")
    dicts = []
    for label, class_name in enumerate(image_folder_classes(root)):
        folder = os.path.join(root, class_name)
        for file_name in sorted(f for f in os.listdir(folder) if is_image_file(f)):
            dicts.append({"file_name": os.path.join(folder, file_name), "label": label, "image_id": len(dicts)})
    if not dicts:
        raise InputValueError(f"{what}image folder {root!r} has no images in class sub-directories "
                              "(expected <root>/<class>/<image>)")
    return dicts


def register_image_folder(name: str, root: str, **metadata) -> None:
    """Registers the image folder ``root`` as the classification dataset ``name``
    (replacing an earlier registration of that name)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: image_folder_dicts(root, name))
    classes = image_folder_classes(root) if os.path.isdir(root) else []
    MetadataCatalog.get(name).set(image_root=root, classes=classes, evaluator_type=EVALUATOR_TYPE, **metadata)


def register_imagenet(root: str = None) -> None:
    """``imagenet_train`` and ``imagenet_val`` at ``root`` (default ``<datasets>/imagenet``)."""
    root = root or os.path.join(datasets_root(), "imagenet")
    for name, split in IMAGENET_SPLITS.items():
        register_image_folder(name, os.path.join(root, split),
                              missing_hint="put ImageNet there as <split>/<wnid>/*.JPEG (datasets/README.md)")


def default_synthetic_cls_root() -> str:
    """``<datasets_root()>/synthetic_cls``, beside ``synthetic_coco``."""
    return os.path.join(datasets_root(), "synthetic_cls")


def register_synthetic_cls(root: str = None) -> None:
    """``synthetic_cls_train``, ``synthetic_cls_val`` and ``synthetic_cls_val_heldout`` at ``root``."""
    root = root or default_synthetic_cls_root()
    for name, split in SYNTHETIC_CLS_SPLITS.items():
        register_image_folder(name, os.path.join(root, split),
                              missing_hint="it is generated on first use by tools/train_net.py")


def ensure_synthetic_cls(root: str = None, **generate_kwargs) -> str:
    """Generates the synthetic classification set at ``root`` unless it is there
    at the current version (saying where), registers it and returns the root."""
    root = root or default_synthetic_cls_root()
    with one_at_a_time(root.rstrip(os.sep) + ".lock", f"the synthetic classification set in {root}"):
        version = classification_dataset_version(root)
        if version != CLS_DATASET_VERSION:
            state = "not found" if version == 0 else f"version {version}"
            logger.warning(f"synthetic classification dataset {state} in {os.path.abspath(root)}: generating "
                           f"version {CLS_DATASET_VERSION} there")
            generate_classification_dataset(root, **generate_kwargs)
    register_synthetic_cls(root)
    return root


def register_image_folders(entries) -> List[str]:
    """Registers the (name, directory) pairs of ``DATASETS.IMAGE_FOLDERS``; a
    name already used by another dataset is an error. Returns the names."""
    for name, root in entries:
        if name in DatasetCatalog.list() and MetadataCatalog.get(name).get("source") != IMAGE_FOLDERS_SOURCE:
            raise ValueError(f"DATASETS.IMAGE_FOLDERS: the name {name!r} is already a registered dataset "
                             "(built in); give yours another name")
        register_image_folder(name, root, source=IMAGE_FOLDERS_SOURCE,
                              missing_hint="check its entry in DATASETS.IMAGE_FOLDERS")
    return [name for name, _ in entries]


def register_classification_datasets(cfg) -> List[str]:
    """Registers ImageNet and the synthetic set where the datasets root now is
    (``$DETECTRON2_DATASETS``), and ``DATASETS.IMAGE_FOLDERS``; returns the latter's names."""
    register_imagenet()
    register_synthetic_cls()
    return register_image_folders(cfg.DATASETS.IMAGE_FOLDERS)


def is_classification_dataset(name: str) -> bool:
    return MetadataCatalog.get(name).get("evaluator_type") == EVALUATOR_TYPE


register_imagenet()
register_synthetic_cls()
