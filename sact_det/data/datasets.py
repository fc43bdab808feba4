"""Dataset registration: the built-in synthetic COCO-format dataset (found
where the README says, generated on first use, saying where), the COCO-format
datasets named in ``DATASETS.COCO_JSON``, and checks that registered
COCO-format datasets exist before a run starts."""
import json
import logging
import os
import re
from typing import Iterable, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from sact_det.data.annotations import validate_on_load
from sact_det.data.synthetic import CATEGORIES, DATASET_VERSION, dataset_version, generate_dataset, split_paths
from sact_det.utils.errors import InputFileNotFoundError, InputKeyError

__all__ = ["SYNTHETIC_SPLITS", "datasets_root", "default_synthetic_root", "register_synthetic",
           "ensure_synthetic", "check_datasets_exist", "coco_category_names", "register_config_datasets"]

logger = logging.getLogger("sact_det")

# Dataset name -> split directory.
SYNTHETIC_SPLITS = {"synthetic_train": "train", "synthetic_val": "val", "synthetic_val_heldout": "val_heldout"}
# Metadata mark of the datasets registered from DATASETS.COCO_JSON.
CONFIG_SOURCE = "DATASETS.COCO_JSON"

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
    """Registers ``synthetic_train``, ``synthetic_val`` and ``synthetic_val_heldout`` at ``root`` with
    Detectron2 (through ``load_coco_json``, as COCO, annotations checked when
    loaded: :func:`~sact_det.data.annotations.validate_on_load`); re-registering moves them."""
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
    validate_on_load(SYNTHETIC_SPLITS)


def ensure_synthetic(root: str = None, **generate_kwargs) -> str:
    """Generates the synthetic dataset at ``root`` unless every split exists at
    the generator's current version (saying where; an older copy is regenerated,
    with a message), registers it, and returns the root."""
    if root is None and datasets_root() == REPOSITORY_DATASETS:
        logger.warning(f"no ./datasets in {os.getcwd()}: using the repository's {REPOSITORY_DATASETS} "
                       "(set DETECTRON2_DATASETS to choose)")
    root = root or default_synthetic_root()
    jsons = [split_paths(root, s)[0] for s in SYNTHETIC_SPLITS.values()]
    if not all(os.path.isfile(j) for j in jsons):
        logger.warning(f"synthetic dataset not found in {os.path.abspath(root)}: generating it there "
                       f"(version {DATASET_VERSION})")
        generate_dataset(root, **generate_kwargs)
    elif any(dataset_version(j) != DATASET_VERSION for j in jsons):
        found = sorted({dataset_version(j) for j in jsons})
        logger.warning(f"the synthetic dataset under {root} is version {found}; regenerating version "
                       f"{DATASET_VERSION}")
        generate_dataset(root, **generate_kwargs)
    register_synthetic(root)
    return root


def coco_category_names(json_file: str) -> List[str]:
    """Category names of a COCO json, by id: what Detectron2's ``load_coco_json``
    sets as ``thing_classes``.

    The ``"categories"`` array is decoded on its own: COCO files put it after the
    (large) images and annotations, and parsing a whole COCO-sized file at every
    start would take seconds and gigabytes. Whatever cannot be read that way is
    parsed whole. Were it misread, Detectron2 would refuse to load the dataset
    (metadata cannot change once set), so a mistake cannot go unnoticed.
    """
    with open(json_file, encoding="utf-8") as f:
        text = f.read()
    categories = None
    for match in reversed(list(re.finditer(r'"categories"\s*:\s*', text))):
        try:
            candidate = json.JSONDecoder().raw_decode(text, match.end())[0]
        except ValueError:
            continue
        if isinstance(candidate, list) and all(isinstance(c, dict) and {"id", "name"} <= set(c)
                                               for c in candidate):
            categories = candidate
            break
    if categories is None:
        try:
            categories = json.loads(text).get("categories")
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{json_file!r} is not a COCO json object: {e}") from None
        if not isinstance(categories, list) or not categories:
            raise ValueError(f"{json_file!r} has no \"categories\" list (COCO format expected)")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def _registered_from_config(name: str) -> bool:
    return name in DatasetCatalog.list() and MetadataCatalog.get(name).get("source") == CONFIG_SOURCE


def register_config_datasets(cfg) -> List[str]:
    """Registers the COCO-format datasets of ``cfg.DATASETS.COCO_JSON`` with
    Detectron2 (``register_coco_instances``, annotations checked when loaded:
    :func:`~sact_det.data.annotations.validate_on_load`); returns their names.

    Class names come from each json's categories when the file exists; a
    missing file is left to :func:`check_datasets_exist`, which reports it when
    a run uses the dataset. Registering again (another config) moves a dataset
    that came from ``COCO_JSON``; a name Detectron2 or sact-det already uses
    for another dataset is an error.
    """
    names = []
    for name, json_file, image_root in cfg.DATASETS.COCO_JSON:
        if name in DatasetCatalog.list():
            if not _registered_from_config(name):
                raise ValueError(f"DATASETS.COCO_JSON: the name {name!r} is already a registered dataset "
                                 "(built in); give yours another name")
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        metadata = {"source": CONFIG_SOURCE}
        if os.path.isfile(json_file):
            metadata["thing_classes"] = _category_names_for(name, json_file)
        register_coco_instances(name, metadata, json_file, image_root)
        names.append(name)
    validate_on_load(names)
    return names


def _category_names_for(name: str, json_file: str) -> List[str]:
    try:
        return coco_category_names(json_file)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"DATASETS.COCO_JSON: dataset {name!r}: cannot read the categories of "
                         f"{json_file!r}: {e}") from None


_LISTED = ("coco", "synthetic", "imagenet")  # the registered names an unknown dataset's error lists


def check_datasets_exist(names: Iterable[str]) -> None:
    """Raises FileNotFoundError naming the dataset, the missing file or
    directory, and where to get it, for COCO-format datasets."""
    for name in names:
        if name not in DatasetCatalog.list():
            raise InputKeyError(f"dataset {name!r} is not registered (a COCO-format dataset of your own goes "
                                "in DATASETS.COCO_JSON, an image-classification folder in DATASETS.IMAGE_FOLDERS); "
                                "registered datasets include "
                                f"{sorted(n for n in DatasetCatalog.list() if any(k in n for k in _LISTED))}")
        meta = MetadataCatalog.get(name)
        if meta.get("missing_hint"):  # set by whoever registered it (sact_det.data.classification)
            hint = meta.missing_hint
        elif name in SYNTHETIC_SPLITS:
            hint = ("generate it with `python tools/make_synthetic_coco.py` "
                    "(or run the demo, which does)")
        elif meta.get("source") == CONFIG_SOURCE:
            hint = "check its entry in DATASETS.COCO_JSON"
        else:
            hint = "see datasets/README.md for the expected layout"
        for attr in ("json_file", "image_root"):
            path = getattr(meta, attr, None)
            if path is not None and not os.path.exists(path):
                raise InputFileNotFoundError(f"dataset {name!r}: {attr} {path!r} does not exist; {hint}")


register_synthetic()
