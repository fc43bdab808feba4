"""Dataset registration: the built-in synthetic COCO-format dataset (found
where the README says, generated on first use where none exists, saying where;
a partly present one is an error that says how to regenerate it; its texture
split generated the first time a run asks for it), the COCO-format
datasets named in ``DATASETS.COCO_JSON``, and checks that registered
COCO-format datasets exist before a run starts."""
import json
import logging
import os
import re
import shlex
import time
from typing import Iterable, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from sact_det.data.annotations import validate_on_load
from sact_det.data.synthetic import (CATEGORIES, DATASET_VERSION, TEXTURE_SPLIT, generate_dataset,
                                     generate_texture_split, split_info, split_paths)
from sact_det.utils.errors import InputFileNotFoundError, InputKeyError, InputValueError
from sact_det.utils.files import one_at_a_time

__all__ = ["SYNTHETIC_SPLITS", "datasets_root", "default_synthetic_root", "register_synthetic",
           "ensure_synthetic", "check_datasets_exist", "check_num_classes", "coco_category_names",
           "register_config_datasets", "model_metadata"]

logger = logging.getLogger("sact_det")

# Dataset name -> split directory. The texture split is not part of a complete
# dataset: it is generated when a run asks for it (ensure_synthetic's ``names``),
# so that copies made before it existed stay complete.
SYNTHETIC_SPLITS = {"synthetic_train": "train", "synthetic_val": "val", "synthetic_val_heldout": "val_heldout",
                    "synthetic_val_texture": TEXTURE_SPLIT}
# In the synthetic dataset's root while it is being generated: what is there is the generator's.
GENERATING = ".generating"
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


def _register_coco(name: str, metadata: dict, json_file: str, image_root: str) -> None:
    """Detectron2's ``register_coco_instances``, keeping each annotation's
    ``"style"`` where it has one: the SACT evaluator reports where the units
    went per kind of object."""
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name, extra_annotation_keys=["style"]))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)


def register_synthetic(root: str = None) -> None:
    """Registers ``synthetic_train``, ``synthetic_val``, ``synthetic_val_heldout`` and
    ``synthetic_val_texture`` at ``root`` with
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
        _register_coco(name, {"thing_classes": [c["name"] for c in CATEGORIES]}, json_file, image_root)
    validate_on_load(SYNTHETIC_SPLITS)


def ensure_synthetic(root: str = None, names: Iterable[str] = (), **generate_kwargs) -> str:
    """Makes sure the synthetic dataset is at ``root``, registers it, and returns the root.

    * Nothing of it there, or what a generation that was interrupted left:
      generated there (saying where); ``generate_kwargs`` go to
      :func:`~sact_det.data.synthetic.generate_dataset`.
    * Complete at the generator's version: used as it is.
    * Complete, written by an older version of the generator: the old copy is
      moved aside to ``<root>.v<old version>`` (not overwritten: it may hold
      the user's edits), and the current version generated at its sizes (image
      counts, seed, recorded options; ``generate_kwargs`` override them), saying both.
    * Partly there (a split's json or images missing, a json unreadable, or a
      json not written by the generator): an error naming what is missing and
      the command that regenerates it. Nothing is written.

    ``synthetic_val_texture`` among the dataset ``names`` a run uses: its split
    is generated from the dataset's options unless it is there, complete and
    made from them by this version (else it is regenerated: it is derived data).
    """
    if root is None and datasets_root() == REPOSITORY_DATASETS:
        logger.warning(f"no ./datasets in {os.getcwd()}: using the repository's {REPOSITORY_DATASETS} "
                       "(set DETECTRON2_DATASETS to choose)")
    root = root or default_synthetic_root()
    with one_at_a_time(root.rstrip(os.sep) + ".lock", f"the synthetic dataset in {root}"):
        if os.path.exists(os.path.join(root, GENERATING)):
            logger.warning(f"the generation of the synthetic dataset in {os.path.abspath(root)} was interrupted: "
                           f"generating it again (version {DATASET_VERSION})")
            _generate(root, generate_kwargs)
        elif (infos := _synthetic_splits(root)) is None:
            logger.warning(f"synthetic dataset not found in {os.path.abspath(root)}: generating it there "
                           f"(version {DATASET_VERSION})")
            _generate(root, generate_kwargs)
        elif any(info["version"] != DATASET_VERSION for info in infos.values()):
            found = sorted({info["version"] for info in infos.values()})
            kept = _unused_name(f"{root.rstrip(os.sep)}.v{min(found)}")
            logger.warning(f"the synthetic dataset under {root} is version {found}; regenerating version "
                           f"{DATASET_VERSION} at its sizes (the old copy is moved to {kept})")
            os.rename(root, kept)
            _generate(root, {**_generation_options(infos), **generate_kwargs})
        if "synthetic_val_texture" in set(names):
            _ensure_texture_split(root)
    register_synthetic(root)
    return root


def _ensure_texture_split(root: str) -> None:
    """Generates the texture split of the complete dataset at ``root`` unless it is made from its options."""
    options = _generation_options(_synthetic_splits(root))
    if not _made_from(root, TEXTURE_SPLIT, options):
        logger.warning(f"generating the texture split of the synthetic dataset in {os.path.abspath(root)} "
                       f"({options['num_val']} images)")
        generate_texture_split(root, options)


def _made_from(root: str, split: str, options: dict) -> bool:
    """Whether ``split`` is at ``root``, complete, and written by this version of
    the generator from ``options`` (as :func:`_generation_options` gives them)."""
    json_file, image_dir = split_paths(root, split)
    try:
        info = split_info(json_file)
    except (OSError, ValueError):  # absent or unreadable
        return False
    return (info["version"] == DATASET_VERSION and "options" in info
            and _generation_options({split: info}) == options  # its options normalised the same way
            and all(os.path.isfile(os.path.join(image_dir, str(f))) for f in info["file_names"]))


def _generate(root: str, generate_kwargs: dict) -> None:
    """:func:`~sact_det.data.synthetic.generate_dataset` at ``root``, marked as
    under way (:data:`GENERATING`) until it is complete."""
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, GENERATING)
    with open(marker, "w") as f:
        f.write(f"generating since {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})\n")
    generate_dataset(root, **generate_kwargs)
    os.remove(marker)


def _synthetic_splits(root: str):
    """Each split's :func:`~sact_det.data.synthetic.split_info` when the whole
    dataset is at ``root``; None when nothing of it is; an error naming what is
    missing (and how to regenerate it) when part of it is."""
    paths = {split: split_paths(root, split) for split in SYNTHETIC_SPLITS.values() if split != TEXTURE_SPLIT}
    if not any(os.path.exists(p) for pair in paths.values() for p in pair):
        return None
    infos, problems = {}, []
    for split, (json_file, image_dir) in paths.items():
        if not os.path.isfile(json_file):
            problems.append(f"{json_file} is missing")
            continue
        try:
            info = split_info(json_file)
        except (OSError, ValueError) as e:
            problems.append(str(e))
            continue
        if not info["ours"]:
            problems.append(f"{json_file} was not written by sact-det's generator")
            continue
        absent = [f for f in info["file_names"] if not os.path.isfile(os.path.join(image_dir, str(f)))]
        if absent:
            problems.append(f"{len(absent)} of the {len(info['file_names'])} images of {image_dir} are missing "
                            f"(e.g. {absent[0]})")
        infos[split] = info
    if problems:
        options = _generation_options(infos)
        command = (f"python tools/make_synthetic_coco.py --output {shlex.quote(root)} --num-train "
                   f"{options['num_train']} --num-val {options['num_val']} --seed {options['seed']}")
        raise InputFileNotFoundError(
            f"the synthetic dataset in {root} is incomplete: {'; '.join(problems)}. Nothing was changed; "
            f"regenerate it with `{command}` (which rewrites that directory's dataset files), or move {root} "
            "away to have a new one generated")
    return infos


def _generation_options(infos) -> dict:
    """:func:`~sact_det.data.synthetic.generate_dataset`'s arguments that made the
    splits of ``infos`` (what they recorded, else their image counts and seed),
    the defaults for what none of them tells."""
    options = dict(num_train=800, num_val=100, seed=0)
    for info in infos.values():
        options.update(info.get("options") or {})
    for split, info in infos.items():
        if "options" not in info:
            count = {"train": "num_train", "val": "num_val", "val_heldout": "num_heldout"}[split]
            options[count] = len(info["file_names"])
            options["seed"] = info.get("seed", options["seed"])
    if "size_range" in options:
        options["size_range"] = tuple(tuple(r) for r in options["size_range"])
    return options


def _unused_name(path: str) -> str:
    candidate, index = path, 1
    while os.path.lexists(candidate):
        index += 1
        candidate = f"{path}-{index}"
    return candidate


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
    Detectron2 (as ``register_coco_instances`` does, keeping annotations'
    ``"style"``; checked when loaded: :func:`~sact_det.data.annotations.validate_on_load`);
    returns their names.

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
            metadata["thing_classes"] = _category_names_for(name, json_file, f"{CONFIG_SOURCE}: ")
        _register_coco(name, metadata, json_file, image_root)
        names.append(name)
    validate_on_load(names)
    return names


def model_metadata(cfg):
    """Detectron2's metadata of the dataset that names a model's classes: the
    first of ``DATASETS.TEST``, else of ``DATASETS.TRAIN`` (as Detectron2's
    ``DefaultPredictor`` takes it; neither: an empty entry).

    A dataset of ``DATASETS.COCO_JSON`` is registered (or moved) as the config
    says, as the tools do (a config from :func:`~sact_det.config.get_sact_cfg`
    has registered nothing). When the entry
    has no ``thing_classes`` (a dataset registered with ``register_coco_instances``
    and no metadata: Detectron2 sets the names only when it loads the
    annotations), they are read from its ``json_file``'s categories now, by id,
    as Detectron2 would set them.
    """
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        return MetadataCatalog.get("__unused")
    name = names[0]
    if name in [entry[0] for entry in cfg.DATASETS.COCO_JSON]:
        register_config_datasets(cfg)
    metadata = MetadataCatalog.get(name)
    json_file = metadata.get("json_file")
    if metadata.get("thing_classes") is None and json_file and os.path.isfile(json_file):
        metadata.thing_classes = _category_names_for(name, json_file)
    return metadata


def _category_names_for(name: str, json_file: str, source: str = "") -> List[str]:
    try:
        return coco_category_names(json_file)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputValueError(f"{source}dataset {name!r}: cannot read the categories of {json_file!r}: "
                              f"{e}") from None


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
        elif SYNTHETIC_SPLITS.get(name) == TEXTURE_SPLIT:
            hint = "tools/train_net.py generates it from the synthetic dataset when DATASETS.TEST names it"
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


def check_num_classes(num_classes: int, names: Iterable[str]) -> None:
    """Raises an error naming both numbers and the dataset when a dataset's
    classes (its ``thing_classes``, known before loading for the synthetic
    datasets, those of ``DATASETS.COCO_JSON`` and Detectron2's COCO) are not
    ``num_classes`` (``MODEL.ROI_HEADS.NUM_CLASSES``): Detectron2 would train a
    box predictor for the wrong classes, and its COCO evaluator fails only after
    the whole inference. Datasets whose classes are unknown until loaded pass."""
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes") if name in DatasetCatalog.list() else None
        if classes is not None and len(classes) != num_classes:
            raise InputValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}, but dataset {name!r} has {len(classes)} "
                f"categories ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); set "
                f"MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}")


register_synthetic()
