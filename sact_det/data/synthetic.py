"""A synthetic COCO-format detection dataset, written to disk (version 2).

Every command of the project runs without COCO on it: JPEG images with
objects of four categories (disc, square, triangle, star) and a real COCO
``instances_*.json`` (boxes, visible-region masks as RLE, areas), loaded
through the same ``load_coco_json`` path as COCO.

What varies, independently of the category (an object's category is its
shape alone):

* object appearance: flat colour, stripes, noise texture, colour gradient, or
  low contrast against the background around it;
* object scale: 10-45 % of the image's shorter side, log-uniform, so many are
  small (a few cells of the stride-16 feature map);
* occlusion: objects overlap each other and distractors, up to 30 % of an
  object hidden (annotations are the visible region);
* background: plain, smooth colour field, texture, or clutter (lines, blobs
  and extra distractors);
* distractors: shapes of no category (elongated ellipse, ring, cross,
  crescent, bar) in the same appearances as objects.

The held-out split uses object appearances (checkerboard, dots, concentric
rings) and backgrounds (grid, marble) that the training split never shows.
The texture split (:func:`generate_texture_split`, made on demand) is a
controlled check of where computation goes: on the training split's
backgrounds, every object is either plain (``flat``) or finely textured
(``fine_noise``), half and half, and there are no distractors.
Each image records its background style (``"background"``) and each annotation
its appearance (``"style"``). Output is deterministic for a seed.
"""
import json
import math
import os
import re
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from sact_det.utils.errors import InputValueError
from sact_det.utils.files import atomic_path

__all__ = ["DATASET_VERSION", "CATEGORIES", "OBJECT_STYLES", "BACKGROUND_STYLES", "TEXTURE_SPLIT", "render_image",
           "generate_split", "generate_dataset", "generate_texture_split", "split_paths", "split_info"]

DATASET_VERSION = 2

CATEGORIES = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
]
# Appearances and backgrounds of the training/validation split, of the held-out split and of
# the texture split (plain against finely textured objects on the training backgrounds).
OBJECT_STYLES = {"train": ("flat", "striped", "noise", "gradient", "low_contrast"),
                 "heldout": ("checker", "dots", "rings"),
                 "texture": ("flat", "fine_noise")}
BACKGROUND_STYLES = {"train": ("plain", "smooth", "texture", "clutter"), "heldout": ("grid", "marble")}
BACKGROUND_STYLES["texture"] = BACKGROUND_STYLES["train"]
DISTRACTORS = ("ellipse", "ring", "cross", "crescent", "bar")

# The split generated on demand from a dataset's options (generate_texture_split).
TEXTURE_SPLIT = "val_texture"
# Each split's seed is the dataset's plus this.
_SEED_OFFSETS = {"train": 0, "val": 1, "val_heldout": 2, TEXTURE_SPLIT: 3}
IMAGE_SIZES = ((224, 288), (288, 384))  # default ((min_h, max_h), (min_w, max_w)) of the images
MAX_OBJECTS = 4  # default most objects per image

MIN_VISIBLE = 0.7  # an object keeps at least this share of its area visible
SIZE_RANGE = (0.1, 0.45)  # object size (circumscribed diameter) / shorter image side


def split_paths(root: str, split: str) -> Tuple[str, str]:
    """(annotation json, image directory) of a split under ``root``."""
    return (os.path.join(root, "annotations", f"instances_{split}.json"),
            os.path.join(root, split))


def split_info(json_file: str) -> Dict:
    """What a split's json says of its making: its ``info`` (``version``: 1 before
    versions were recorded; ``options``: :func:`generate_dataset`'s arguments
    since they are recorded), ``ours`` (written by this generator), ``seed``
    (the dataset's, when known) and the image ``file_names``. An error naming
    the file when it is not a JSON object (e.g. truncated)."""
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputValueError(f"{json_file} is not valid JSON ({e})") from None
    if not isinstance(coco, dict):
        raise InputValueError(f"{json_file} holds a JSON {type(coco).__name__}, expected a COCO object")
    info = dict(coco.get("info") or {})
    info.setdefault("version", 1)
    description = str(info.get("description", ""))
    made = re.search(r"^sact-det synthetic shapes, split (\w+), seed (\d+)$", description)
    info["ours"] = made is not None
    if "options" in info:
        info["seed"] = info["options"]["seed"]
    elif made is not None:  # before options were recorded: the split's seed is the dataset's + its offset
        info["seed"] = int(made.group(2)) - _SEED_OFFSETS.get(made.group(1), 0)
    info["file_names"] = [image.get("file_name") for image in coco.get("images") or () if isinstance(image, dict)]
    return info


# --- colours and fields ------------------------------------------------------------------
def _colour(rng, saturation=(120, 256), value=(110, 256)) -> np.ndarray:
    """A random BGR colour, float32 [3]."""
    hsv = np.uint8([[[rng.randint(0, 180), rng.randint(*saturation), rng.randint(*value)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _noise(rng, height: int, width: int, cell: float) -> np.ndarray:
    """Band-limited noise in [-1, 1] with features of about ``cell`` pixels."""
    coarse = rng.uniform(-1, 1, size=(max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)))
    return cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _grid(height: int, width: int):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _stripes(rng, height, width, period) -> np.ndarray:
    """Stripe weights in [0, 1] of random orientation."""
    yy, xx = _grid(height, width)
    angle = rng.uniform(0, math.pi)
    return 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)


def _mix(weight: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return weight[..., None] * first + (1 - weight[..., None]) * second


# --- backgrounds ---------------------------------------------------------------------------
def _background(rng, style: str, height: int, width: int) -> np.ndarray:
    """A float32 BGR background of the given style."""
    grain = rng.normal(0, 4, size=(height, width, 3)).astype(np.float32)
    if style == "plain":
        return np.broadcast_to(_colour(rng, (20, 140), (80, 220)), (height, width, 3)) + grain
    if style in ("smooth", "clutter"):  # muted low-frequency colour field
        coarse = rng.uniform(70, 180, size=(4, 5, 3)).astype(np.float32)
        coarse = 0.5 * coarse + 0.5 * coarse.mean(axis=2, keepdims=True)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) + grain
        if style == "clutter":
            image = _clutter(rng, image)
        return image
    if style == "texture":  # two octaves of noise modulating a colour
        base = _colour(rng, (30, 160), (90, 210))
        field = 0.6 * _noise(rng, height, width, rng.uniform(6, 14)) + 0.4 * _noise(rng, height, width, 3)
        return base * (1 + 0.35 * field[..., None]) + grain
    if style == "grid":  # held out: a regular checkerboard or grid of two close colours
        first, second = _colour(rng, (30, 200), (90, 220)), _colour(rng, (30, 200), (90, 220))
        yy, xx = _grid(height, width)
        period = rng.uniform(10, 24)
        if rng.rand() < 0.5:
            weight = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
        else:
            weight = (((xx % period) < 2) | ((yy % period) < 2)).astype(np.float32)
        return _mix(weight, first, second) + grain
    if style == "marble":  # held out: high-contrast turbulent veins
        yy, xx = _grid(height, width)
        turbulence = _noise(rng, height, width, 20) + 0.5 * _noise(rng, height, width, 7)
        veins = 0.5 + 0.5 * np.sin(xx / rng.uniform(6, 12) + 4 * turbulence)
        return _mix(veins.astype(np.float32), _colour(rng), _colour(rng, (0, 80), (40, 140))) + grain
    raise ValueError(f"unknown background style {style!r}")


def _clutter(rng, image: np.ndarray) -> np.ndarray:
    """Low-contrast lines and blobs a little darker or lighter than the background."""
    height, width = image.shape[:2]
    for _ in range(rng.randint(5, 14)):
        layer = np.zeros((height, width), np.float32)
        if rng.rand() < 0.5:
            p1 = (int(rng.randint(0, width)), int(rng.randint(0, height)))
            p2 = (int(rng.randint(0, width)), int(rng.randint(0, height)))
            cv2.line(layer, p1, p2, 1.0, int(rng.randint(1, 3)), cv2.LINE_AA)
        else:
            center = (int(rng.randint(0, width)), int(rng.randint(0, height)))
            axes = (int(rng.randint(2, 8)), int(rng.randint(2, 8)))
            cv2.ellipse(layer, center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        image = image + float(rng.choice([-1, 1]) * rng.uniform(15, 40)) * layer[..., None]
    return image


# --- object appearance ----------------------------------------------------------------------
def _appearance(rng, style: str, height: int, width: int, box, local_colour: np.ndarray) -> np.ndarray:
    """A float32 BGR fill of the given style for an object with bounding box
    ``box`` (x0, y0, x1, y1); ``local_colour`` is the background under it."""
    x0, y0, x1, y1 = box
    size = max(x1 - x0, y1 - y0, 4.0)
    first, second = _colour(rng), _colour(rng)
    if style == "flat":
        return np.broadcast_to(first, (height, width, 3))
    if style == "striped":
        return _mix(_stripes(rng, height, width, rng.uniform(max(3.0, size / 12), max(4.0, size / 4))), first, second)
    if style == "noise":
        field = _noise(rng, height, width, rng.uniform(2, max(3.0, size / 6)))
        return first * (1 + rng.uniform(0.3, 0.6) * field[..., None])
    if style == "fine_noise":  # texture split: high contrast at every size, features of 2-3 pixels
        field = _noise(rng, height, width, rng.uniform(2, 3))
        return first * (1 + rng.uniform(0.5, 0.7) * field[..., None])
    if style == "gradient":
        yy, xx = _grid(height, width)
        angle = rng.uniform(0, 2 * math.pi)
        t = ((xx - x0) * math.cos(angle) + (yy - y0) * math.sin(angle)) / size
        return _mix(np.clip(t, 0, 1).astype(np.float32), first, second)
    if style == "low_contrast":  # the background's colour, a little lighter or darker
        shift = float(rng.choice([-1, 1]) * rng.uniform(25, 45))
        return np.broadcast_to(local_colour + shift + rng.normal(0, 6, 3).astype(np.float32), (height, width, 3))
    if style == "checker":
        yy, xx = _grid(height, width)
        angle, cell = rng.uniform(0, math.pi / 2), rng.uniform(max(2.0, size / 14), max(3.0, size / 5))
        u, v = xx * math.cos(angle) + yy * math.sin(angle), -xx * math.sin(angle) + yy * math.cos(angle)
        return _mix(((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32), first, second)
    if style == "dots":
        yy, xx = _grid(height, width)
        period = rng.uniform(max(4.0, size / 8), max(5.0, size / 3))
        dist = np.hypot((xx % period) - period / 2, (yy % period) - period / 2)
        return _mix((dist < period * 0.3).astype(np.float32), first, second)
    if style == "rings":
        yy, xx = _grid(height, width)
        dist = np.hypot(xx - (x0 + x1) / 2, yy - (y0 + y1) / 2)
        return _mix((0.5 + 0.5 * np.sin(dist * 2 * math.pi / rng.uniform(4, max(5.0, size / 4)))).astype(np.float32),
                    first, second)
    raise ValueError(f"unknown object style {style!r}")


# --- shapes ---------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, size: float, angle: float, rng) -> List[np.ndarray]:
    """Outer (and, for the ring, inner) contour ``[K, 2]`` of a shape of ``size``
    pixels (circumscribed diameter)."""
    r = size / 2

    def ring_of(radii, t):
        return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)

    if shape == "disc":
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        return [ring_of(np.full_like(t, r), t)]
    if shape == "square":
        t = angle + np.arange(4) * math.pi / 2 + math.pi / 4
        return [ring_of(np.full_like(t, r), t)]
    if shape == "triangle":
        t = angle + np.arange(3) * 2 * math.pi / 3
        return [ring_of(np.full_like(t, r), t)]
    if shape == "star":
        t = angle + np.arange(10) * math.pi / 5
        return [ring_of(np.where(np.arange(10) % 2 == 0, r, r * 0.45), t)]
    # Distractors: no category.
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = np.array([[cos, -sin], [sin, cos]])
    if shape == "ellipse":  # elongated: never a disc
        points = np.stack([r * np.cos(t), r / rng.uniform(2.5, 4.0) * np.sin(t)], axis=1)
    elif shape == "ring":
        return [ring_of(np.full_like(t, r), t), ring_of(np.full_like(t, r * rng.uniform(0.45, 0.7)), t)]
    elif shape == "cross":
        w = r * rng.uniform(0.25, 0.4)
        points = np.array([[-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r], [-w, r],
                           [-w, w], [-r, w], [-r, -w], [-w, -w]])
    elif shape == "crescent":  # a disc minus an offset disc
        inner = r * rng.uniform(0.7, 0.85)
        offset = r * rng.uniform(0.35, 0.5)
        return [ring_of(np.full_like(t, r), t),
                ring_of(np.full_like(t, inner), t) + [offset * cos, offset * sin]]
    elif shape == "bar":
        w = r * rng.uniform(0.12, 0.25)
        points = np.array([[-r, -w], [r, -w], [r, w], [-r, w]])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [points @ rotate.T + [cx, cy]]


def _fill(contours: List[np.ndarray], height: int, width: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the outer contour minus the inner one."""
    mask = np.zeros((height, width), np.float32)
    cv2.fillPoly(mask, [np.round(contours[0] * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    if len(contours) > 1:
        cv2.fillPoly(mask, [np.round(contours[1] * 16).astype(np.int32)], 0.0, cv2.LINE_AA, shift=4)
    return mask


def render_image(rng: np.random.RandomState, height: int, width: int, max_objects: int = MAX_OBJECTS,
                 split_styles: str = "train", categories: Sequence[str] = None,
                 size_range: Tuple[float, float] = SIZE_RANGE, distractors: bool = True,
                 alternate_styles: bool = False) -> Tuple[np.ndarray, List[Dict], str]:
    """One uint8 BGR image, its objects (category, style, visible bool mask) and
    its background style. ``split_styles``: "train", "heldout" or "texture" (the
    appearances and backgrounds drawn from); ``categories``: the names objects
    are drawn from (default: all); ``size_range``: object size range as a share
    of the shorter image side (log-uniform); ``distractors``: False draws none;
    ``alternate_styles``: objects take the appearances in turn from a random
    first one (every kind in every image with enough objects) instead of each
    drawing one. The defaults draw what version 2 of the detection dataset drew."""
    names = [c["name"] for c in CATEGORIES] if categories is None else list(categories)
    background = str(rng.choice(BACKGROUND_STYLES[split_styles]))
    image = _background(rng, background, height, width)
    styles = OBJECT_STYLES[split_styles]
    first_style = rng.randint(len(styles)) if alternate_styles else 0  # no draw otherwise: same stream
    num_objects = rng.randint(1, max_objects + 1)
    num_distractors = rng.randint(2, 4) if background == "clutter" else rng.randint(0, 2)
    num_distractors *= distractors  # drawn either way: the random stream stays the same
    layers = ["object"] * num_objects + ["distractor"] * num_distractors
    rng.shuffle(layers)  # distractors in front of some objects, behind others
    short = min(height, width)
    objects = []  # dicts with "coverage" (full shape) and "visible"
    for kind in layers:
        for _attempt in range(30):  # rejection sampling: keep every object mostly visible
            shape = names[rng.randint(len(names))] if kind == "object" else str(rng.choice(DISTRACTORS))
            size = short * math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
            cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
            contours = _polygon(shape, cx, cy, size, rng.uniform(0, 2 * math.pi), rng)
            coverage = _fill(contours, height, width)
            solid = coverage > 0.5
            if solid.sum() < 12:
                continue
            if all((o["visible"] & ~solid).sum() >= MIN_VISIBLE * o["area"] for o in objects):
                break
        else:
            continue
        x0, y0 = contours[0].min(axis=0)
        x1, y1 = contours[0].max(axis=0)
        if alternate_styles and kind == "object":
            style = styles[(first_style + len(objects)) % len(styles)]
        else:
            style = str(rng.choice(styles))
        local = image[solid].mean(axis=0)
        fill = _appearance(rng, style, height, width, (x0, y0, x1, y1), local)
        image = coverage[..., None] * fill + (1 - coverage[..., None]) * image
        for other in objects:
            other["visible"] &= ~solid
        if kind == "object":
            category = next(c["id"] for c in CATEGORIES if c["name"] == shape)
            objects.append({"category_id": category, "style": style, "visible": solid.copy(),
                            "area": int(solid.sum())})
    return np.clip(image, 0, 255).astype(np.uint8), objects, background


def _annotation(obj: Dict, annotation_id: int, image_id: int) -> Dict:
    """COCO annotation of an object's visible region (box, RLE mask, area)."""
    rle = mask_utils.encode(np.asfortranarray(obj["visible"].astype(np.uint8)))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return {"id": annotation_id, "image_id": image_id, "category_id": obj["category_id"],
            "bbox": [x, y, w, h], "area": float(mask_utils.area(rle)), "iscrowd": 0,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "style": obj["style"]}


def generate_split(root: str, split: str, num_images: int, seed: int, size_range=IMAGE_SIZES,
                   max_objects: int = MAX_OBJECTS, split_styles: str = "train", options: Dict = None,
                   **render_kwargs) -> str:
    """Writes ``num_images`` images and their COCO json; returns the json path.

    Args:
        size_range: ((min_h, max_h), (min_w, max_w)) of the images, in pixels.
        split_styles: "train", "heldout" or "texture" appearances and backgrounds.
        options: recorded in the json's ``info`` (:func:`generate_dataset`'s arguments).
        render_kwargs: for :func:`render_image` (``distractors``, ``alternate_styles``).
    """
    json_path, image_dir = split_paths(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    rng = np.random.RandomState(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height = int(rng.randint(size_range[0][0], size_range[0][1] + 1))
        width = int(rng.randint(size_range[1][0], size_range[1][1] + 1))
        image, objects, background = render_image(rng, height, width, max_objects, split_styles, **render_kwargs)
        file_name = f"{image_id:06d}.jpg"
        if not cv2.imwrite(os.path.join(image_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {os.path.join(image_dir, file_name)}")
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width,
                       "background": background})
        for obj in objects:
            annotations.append(_annotation(obj, len(annotations) + 1, image_id))
    info = {"description": f"sact-det synthetic shapes, split {split}, seed {seed}",
            "version": DATASET_VERSION, "styles": split_styles}
    if options is not None:
        info["options"] = options
    coco = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
    # A complete json or none: the version check trusts it.
    with atomic_path(json_path) as temporary, open(temporary, "w") as f:
        json.dump(coco, f)
    return json_path


def generate_dataset(root: str, num_train: int = 800, num_val: int = 100, seed: int = 0,
                     num_heldout: int = None, size_range=IMAGE_SIZES, max_objects: int = MAX_OBJECTS
                     ) -> Dict[str, str]:
    """Writes the ``train``, ``val`` and ``val_heldout`` splits under ``root``;
    returns their json paths. ``val`` is drawn like ``train``; ``val_heldout``
    (``num_heldout`` images, default ``num_val``) from the held-out styles.
    Each json records these arguments (``info.options``). The texture split is
    not written here but on demand (:func:`generate_texture_split`)."""
    num_heldout = num_val if num_heldout is None else num_heldout
    options = {"num_train": num_train, "num_val": num_val, "num_heldout": num_heldout, "seed": seed,
               "size_range": [list(r) for r in size_range], "max_objects": max_objects}
    kwargs = dict(size_range=size_range, max_objects=max_objects, options=options)
    return {
        "train": generate_split(root, "train", num_train, seed + _SEED_OFFSETS["train"], **kwargs),
        "val": generate_split(root, "val", num_val, seed + _SEED_OFFSETS["val"], **kwargs),
        "val_heldout": generate_split(root, "val_heldout", num_heldout, seed + _SEED_OFFSETS["val_heldout"],
                                      split_styles="heldout", **kwargs),
    }


def generate_texture_split(root: str, options: Dict) -> str:
    """Writes the texture split (:data:`TEXTURE_SPLIT`) of the dataset at ``root``
    made with ``options`` (:func:`generate_dataset`'s arguments, as its jsons
    record them), and records them; returns its json path.

    ``num_val`` images of the dataset's image sizes and object counts, on the
    training split's backgrounds, with no distractors; objects are in turn
    ``flat`` (plain colour) and ``fine_noise`` (a fine, high-contrast texture)
    from a random first one, so each image with two objects or more has both
    and the split holds about as many of each.
    """
    return generate_split(root, TEXTURE_SPLIT, options["num_val"], options["seed"] + _SEED_OFFSETS[TEXTURE_SPLIT],
                          size_range=options.get("size_range", IMAGE_SIZES),
                          max_objects=options.get("max_objects", MAX_OBJECTS), split_styles="texture",
                          options=options, distractors=False, alternate_styles=True)
