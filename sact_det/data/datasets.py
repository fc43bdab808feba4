"""Dataset registration: the built-in synthetic COCO-format dataset, and checks
that registered COCO-format datasets exist before a run starts."""
import logging
import os
from typing import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .synthetic import CATEGORIES, DATASET_VERSION, dataset_version, generate_dataset, split_paths

__all__ = ["SYNTHETIC_SPLITS", "default_synthetic_root", "register_synthetic",
           "ensure_synthetic", "check_datasets_exist"]

logger = logging.getLogger("sact_det")

# Dataset name -> split directory.
SYNTHETIC_SPLITS = {"synthetic_train": "train", "synthetic_val": "val", "synthetic_val_heldout": "val_heldout"}


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/synthetic_coco`` (``datasets/synthetic_coco`` by default),
    beside Detectron2's ``coco/``."""
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic_coco")


def register_synthetic(root: str = None) -> None:
    """Registers ``synthetic_train``, ``synthetic_val`` and ``synthetic_val_heldout`` at ``root`` with
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
    """Generates the synthetic dataset at ``root`` unless every split exists at
    the generator's current version (an older copy is regenerated, with a
    message), registers it, and returns the root."""
    root = root or default_synthetic_root()
    jsons = [split_paths(root, s)[0] for s in SYNTHETIC_SPLITS.values()]
    if not all(os.path.isfile(j) for j in jsons):
        logger.info(f"generating the synthetic dataset (version {DATASET_VERSION}) under {root}")
        generate_dataset(root, **generate_kwargs)
    elif any(dataset_version(j) != DATASET_VERSION for j in jsons):
        found = sorted({dataset_version(j) for j in jsons})
        logger.warning(f"the synthetic dataset under {root} is version {found}; regenerating version "
                       f"{DATASET_VERSION}")
        generate_dataset(root, **generate_kwargs)
    register_synthetic(root)
    return root


def check_datasets_exist(names: Iterable[str]) -> None:
    """Raises FileNotFoundError naming the dataset, the missing file or
    directory, and where to get it, for COCO-format datasets."""
    for name in names:
        if name not in DatasetCatalog.list():
            raise KeyError(f"dataset {name!r} is not registered; registered datasets include "
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
                raise FileNotFoundError(f"dataset {name!r}: {attr} {path!r} does not exist; {hint}")


register_synthetic()
