"""COCO-format annotations checked when a dataset is loaded, and the boxes
training uses.

:func:`validate_on_load` makes ``DatasetCatalog.get(name)`` of a COCO-format
dataset (one registered with a ``json_file``, e.g. by ``register_coco_instances``)

* name the annotation file when it cannot be used: not JSON, not a COCO object,
  no ``"images"`` or ``"categories"``, no images, or annotations of category ids
  that ``"categories"`` does not list (Detectron2 cannot map them to a class);
* log one warning per dataset counting the boxes with problems, with image ids
  and the file: not finite (NaN or infinite coordinates), degenerate (zero or
  negative width or height), partly outside the image, wholly outside it;
* warn when the dataset has no annotations at all: its box AP is undefined
  (Detectron2 reports nan) and training has nothing to learn from it.

The loaded annotations are not changed, so evaluation scores them as they are
(the COCO protocol: the evaluator reads the json itself). Training uses
:func:`boxes_for_training`: boxes clipped to the image, non-finite, degenerate
and wholly outside ones dropped.
"""
import json
import logging
import math
from collections import Counter
from typing import Callable, Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from sact_det.utils.errors import InputValueError

__all__ = ["validate_on_load", "annotation_problems", "boxes_for_training", "OUTSIDE_TOLERANCE"]

logger = logging.getLogger("sact_det")

# A box counts as partly outside when it extends more than this many pixels past
# the image: COCO's own boxes overshoot by rounding.
OUTSIDE_TOLERANCE = 1.0
PROBLEMS = ("not finite", "degenerate", "partly outside", "wholly outside")
# Boxes that training drops; the others with a problem are clipped.
DROPPED = ("not finite", "degenerate", "wholly outside")
_EXPLANATIONS = {"not finite": "NaN or infinite coordinates", "degenerate": "zero or negative width or height",
                 "partly outside": "clipped for training",
                 "wholly outside": "dropped for training, like the degenerate and not finite ones"}
_warned = set()


def _xyxy(annotation: dict):
    return BoxMode.convert(list(annotation["bbox"]), annotation.get("bbox_mode", BoxMode.XYWH_ABS),
                           BoxMode.XYXY_ABS)


def _problem(box, height: int, width: int):
    """The problem of an XYXY box in an image of ``height`` x ``width``, or None."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):  # NaN fails every comparison below: it would pass
        return "not finite"
    if x1 <= x0 or y1 <= y0:
        return "degenerate"
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return "wholly outside"
    t = OUTSIDE_TOLERANCE
    if x0 < -t or y0 < -t or x1 > width + t or y1 > height + t:
        return "partly outside"
    return None


def annotation_problems(dataset_dicts: List[dict]) -> Dict[str, List]:
    """``{problem: [image id of each box with it]}`` over Detectron2 dataset dicts."""
    found = {p: [] for p in PROBLEMS}
    for record in dataset_dicts:
        for annotation in record.get("annotations", ()):
            problem = _problem(_xyxy(annotation), record["height"], record["width"])
            if problem:
                found[problem].append(record["image_id"])
    return found


def _ids(image_ids: List, limit: int = 10) -> str:
    unique = list(dict.fromkeys(image_ids))
    return ", ".join(str(i) for i in unique[:limit]) + (", ..." if len(unique) > limit else "")


def _warn_about_problems(name: str, json_file: str, dataset_dicts: List[dict]) -> None:
    found = annotation_problems(dataset_dicts)
    if not any(found.values()):
        return
    total = sum(len(r.get("annotations", ())) for r in dataset_dicts)
    parts = [f"{len(ids)} {problem} ({_EXPLANATIONS[problem]}; image ids {_ids(ids)})"
             for problem, ids in found.items() if ids]
    _warn_once(f"dataset {name!r} ({json_file}): {sum(map(len, found.values()))} of {total} boxes have "
               f"problems: {'; '.join(parts)}. Training clips boxes to the image and drops not finite, "
               "degenerate and wholly outside ones; evaluation keeps the annotations as they are (COCO protocol).")


def _warn_once(message: str) -> None:
    if message not in _warned:  # the same dataset is loaded by the train and test loaders and evaluators
        _warned.add(message)
        logger.warning(message)


def _read_json(json_file: str):
    with open(json_file) as f:
        return json.load(f)


def _structure_problem(data) -> str:
    """What keeps a parsed json from being a COCO detection file, or ''."""
    if not isinstance(data, dict):
        return (f"holds a JSON {type(data).__name__}, expected an object with \"images\", "
                "\"annotations\" and \"categories\"")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            return f"has no {key!r} list (a COCO detection file has \"images\", \"annotations\", \"categories\")"
        if not data[key]:
            return f"has an empty {key!r} list"
    known = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    unknown = [a for a in data.get("annotations", ()) if isinstance(a, dict) and a.get("category_id") not in known]
    if unknown:
        ids = Counter(a.get("category_id") for a in unknown)
        return (f"has {len(unknown)} annotation(s) of category ids not listed in \"categories\" "
                f"({', '.join(f'{k}: {n}' for k, n in ids.most_common(10))}; "
                f"image ids {_ids([a.get('image_id') for a in unknown])}); listed: {sorted(known)}")
    return ""


def _load_checked(name: str, loader: Callable[[], List[dict]], json_file: str) -> List[dict]:
    """``loader()`` (Detectron2's ``load_coco_json``) with its failures explained
    by the annotation file, and the boxes checked."""
    def error(problem: str):
        return InputValueError(f"dataset {name!r}: annotation file {json_file} {problem}")

    try:
        dataset_dicts = loader()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"is not valid JSON ({e})") from None
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        # pycocotools and load_coco_json reject a malformed file with messages
        # that name neither the file nor the key: find the reason in the file
        # (read again only on this failure path).
        problem = _structure_problem(_read_json(json_file))
        if problem:
            raise error(problem) from e
        raise
    if not dataset_dicts:
        raise error(_structure_problem(_read_json(json_file)) or "lists no images")
    if not any(record.get("annotations") for record in dataset_dicts):
        _warn_once(f"dataset {name!r}: annotation file {json_file} has no annotations for its "
                   f"{len(dataset_dicts)} images: its box AP is undefined (reported as nan), and training has no "
                   "box to learn from")
    _warn_about_problems(name, json_file, dataset_dicts)
    return dataset_dicts


class _CheckedLoader:
    def __init__(self, name: str, loader: Callable[[], List[dict]], json_file: str):
        self.name, self.loader, self.json_file = name, loader, json_file

    def __call__(self) -> List[dict]:
        return _load_checked(self.name, self.loader, self.json_file)


def validate_on_load(names) -> None:
    """Makes ``DatasetCatalog.get`` check each of these COCO-format datasets
    (see the module docstring); other datasets are left as they are."""
    for name in names:
        json_file = getattr(MetadataCatalog.get(name), "json_file", None)
        loader = DatasetCatalog[name]
        if json_file is None or isinstance(loader, _CheckedLoader):
            continue
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _CheckedLoader(name, loader, json_file))


def boxes_for_training(dataset_dicts: List[dict]) -> List[dict]:
    """Copies of the dataset dicts whose boxes fit their images: clipped to the
    image (``XYXY_ABS``), non-finite, degenerate and wholly outside boxes dropped."""
    cleaned = []
    for record in dataset_dicts:
        height, width = record["height"], record["width"]
        annotations = []
        for annotation in record.get("annotations", ()):
            box = _xyxy(annotation)
            if _problem(box, height, width) in DROPPED:
                continue
            x0, y0, x1, y1 = box
            clipped = [min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width),
                       min(max(y1, 0), height)]
            annotations.append(dict(annotation, bbox=clipped, bbox_mode=BoxMode.XYXY_ABS))
        cleaned.append(dict(record, annotations=annotations) if "annotations" in record else record)
    return cleaned
