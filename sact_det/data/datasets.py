"""Dataset registration: the built-in synthetic COCO-format dataset, and checks
that registered COCO-format datasets exist before a run starts."""
import logging
import os
from typing import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..errors import InputFileNotFoundError, InputKeyError
from .synthetic import CATEGORIES, generate_dataset, split_paths

__all__ = ["SYNTHETIC_SPLITS", "datasets_root", "default_synthetic_root", "register_synthetic",
           "ensure_synthetic", "check_datasets_exist"]

logger = logging.getLogger("sact_det")

# Dataset name -> split directory.
SYNTHETIC_SPLITS = {"synthetic_train": "train", "synthetic_val": "val"}

_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The repository's datasets/, when sact-det runs from its source tree.
REPOSITORY_DATASETS = (os.path.join(_REPOSITORY, "datasets")
                       if os.path.isfile(os.path.join(_REPOSITORY, "setup.py")) else None)


def datasets_root() -> str:
    """Where the synthetic dataset lives: ``$DETECTRON2_DATASETS`` when set, else
    ``./datasets`` (Detectron2's default) when it exists, else the repository's
    ``datasets/`` (a command run from another directory), else ``./datasets``."""
    root = os.getenv("DETECTRON2_DATASETS")
    if root:
        return root
    if os.path.isdir("datasets") or REPOSITORY_DATASETS is None or not os.path.isdir(REPOSITORY_DATASETS):
        return "datasets"
    return REPOSITORY_DATASETS


def default_synthetic_root() -> str:
    """``<datasets_root()>/synthetic_coco``, beside Detectron2's ``coco/``."""
    return os.path.join(datasets_root(), "synthetic_coco")


def register_synthetic(root: str = None) -> None:
    """Registers ``synthetic_train`` and ``synthetic_val`` at ``root`` with
    Detectron2 (through ``load_coco_json``, as COCO); re-registering moves them."""
    root = root or default_synthetic_root()
    for name, split in SYNTHETIC_SPLITS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        json_file, image_root = split_paths(root, split)
        # Class names up front (as Detectron2 does for COCO), so that visualisers
        # name the classes without loading the annotations first.
        register_coco_instances(name, {"thing_classes": [c["name"] for c in CATEGORIES]},
                                json_file, image_root)


def ensure_synthetic(root: str = None, **generate_kwargs) -> str:
    """Generates the synthetic dataset at ``root`` unless both splits exist
    (saying where), registers it, and returns the root."""
    if root is None and datasets_root() == REPOSITORY_DATASETS:
        logger.warning(f"no ./datasets in {os.getcwd()}: using the repository's {REPOSITORY_DATASETS} "
                       "(set DETECTRON2_DATASETS to choose)")
    root = root or default_synthetic_root()
    if not all(os.path.isfile(split_paths(root, s)[0]) for s in SYNTHETIC_SPLITS.values()):
        logger.warning(f"synthetic dataset not found in {os.path.abspath(root)}: generating it there")
        generate_dataset(root, **generate_kwargs)
    register_synthetic(root)
    return root


def check_datasets_exist(names: Iterable[str]) -> None:
    """Raises FileNotFoundError naming the dataset, the missing file or
    directory, and where to get it, for COCO-format datasets."""
    for name in names:
        if name not in DatasetCatalog.list():
            raise InputKeyError(f"dataset {name!r} is not registered; registered datasets include "
                                f"{sorted(n for n in DatasetCatalog.list() if 'coco' in n or 'synthetic' in n)}")
        meta = MetadataCatalog.get(name)
        if name in SYNTHETIC_SPLITS:
            hint = ("generate it with `python tools/make_synthetic_coco.py` "
                    "(or run the demo, which does)")
        else:
            hint = "see datasets/README.md for the expected layout"
        for attr in ("json_file", "image_root"):
            path = getattr(meta, attr, None)
            if path is not None and not os.path.exists(path):
                raise InputFileNotFoundError(f"dataset {name!r}: {attr} {path!r} does not exist; {hint}")


register_synthetic()
