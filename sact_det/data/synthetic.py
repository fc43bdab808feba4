"""A synthetic COCO-format detection dataset, written to disk.

Every command of the project runs without COCO on it: images are JPEGs with a
few objects of four categories (disc, square, triangle, star) of varied sizes
on a textured, cluttered background, and the annotations are a real COCO
``instances_*.json`` (boxes, polygons, areas), loaded through the same
``load_coco_json`` path as COCO. Objects cover a minority of each image, so a
SACT model can save computation on the background. An object's category is its
shape alone (colours and striped textures are random); the background is muted
with low-contrast clutter. Output is deterministic for a given seed.
"""
import json
import math
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

__all__ = ["CATEGORIES", "render_image", "generate_split", "generate_dataset", "split_paths"]

CATEGORIES = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
]


def split_paths(root: str, split: str) -> Tuple[str, str]:
    """(annotation json, image directory) of a split under ``root``."""
    return (os.path.join(root, "annotations", f"instances_{split}.json"),
            os.path.join(root, split))


def _background(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    """Muted low-frequency colour field, grain and clutter (lines, blobs)."""
    coarse = rng.uniform(70, 180, size=(4, 5, 3)).astype(np.float32)
    coarse = 0.5 * coarse + 0.5 * coarse.mean(axis=2, keepdims=True)  # desaturated
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 8, size=image.shape).astype(np.float32)
    # Clutter of low contrast: thin lines and small blobs a little darker or
    # lighter than the local background.
    for _ in range(rng.randint(3, 9)):
        p1 = (int(rng.randint(0, width)), int(rng.randint(0, height)))
        p2 = (int(rng.randint(0, width)), int(rng.randint(0, height)))
        shade = float(rng.choice([-1, 1]) * rng.uniform(15, 35))
        layer = np.zeros((height, width), np.float32)
        cv2.line(layer, p1, p2, 1.0, 1, cv2.LINE_AA)
        image += shade * layer[..., None]
    for _ in range(rng.randint(3, 9)):
        center = (int(rng.randint(0, width)), int(rng.randint(0, height)))
        axes = (int(rng.randint(2, 6)), int(rng.randint(2, 6)))
        layer = np.zeros((height, width), np.float32)
        cv2.ellipse(layer, center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        image += float(rng.choice([-1, 1]) * rng.uniform(15, 35)) * layer[..., None]
    return image


def _texture(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    """Two saturated colours of random hues in stripes of random orientation and
    period: an object's class is its shape, not its colour or texture."""
    hues = rng.randint(0, 180, size=2)
    hsv = np.uint8([[[h, rng.randint(160, 256), rng.randint(140, 256)] for h in hues]])
    colours = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0].astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 16)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period
    weight = (0.5 + 0.5 * np.sin(phase))[..., None]
    return weight * colours[0] + (1 - weight) * colours[1]


def _polygon(category: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices ``[K, 2]`` of an object of ``size`` pixels (its circumscribed diameter)."""
    r = size / 2
    if category == 1:  # disc
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        radii = np.full_like(t, r)
    elif category == 2:  # square
        t = angle + np.arange(4) * math.pi / 2 + math.pi / 4
        radii = np.full_like(t, r)
    elif category == 3:  # triangle
        t = angle + np.arange(3) * 2 * math.pi / 3
        radii = np.full_like(t, r)
    else:  # five-pointed star
        t = angle + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)


def _overlaps(box, boxes, margin=4) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin
               and b[1] < y1 + margin for b in boxes)


def render_image(rng: np.random.RandomState, height: int, width: int,
                 max_objects: int = 4) -> Tuple[np.ndarray, List[Dict]]:
    """One BGR image and its objects (category and polygon)."""
    image = _background(rng, height, width)
    objects, boxes = [], []
    short = min(height, width)
    for _ in range(rng.randint(1, max_objects + 1)):
        for _attempt in range(20):  # rejection sampling of a free place
            category = int(rng.randint(1, len(CATEGORIES) + 1))
            size = float(rng.uniform(0.12, 0.4) * short)
            cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
            poly = _polygon(category, cx, cy, size, rng.uniform(0, 2 * math.pi))
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            if not _overlaps((x0, y0, x1, y1), boxes):
                break
        else:
            continue
        mask = np.zeros((height, width), np.float32)
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
        mask = mask[..., None]
        image = mask * _texture(rng, height, width) + (1 - mask) * image
        boxes.append((x0, y0, x1, y1))
        objects.append({"category_id": category, "polygon": poly})
    return np.clip(image, 0, 255).astype(np.uint8), objects


def generate_split(root: str, split: str, num_images: int, seed: int,
                   size_range=((224, 288), (288, 384)), max_objects: int = 4) -> str:
    """Writes ``num_images`` images and their COCO json; returns the json path.

    Args:
        size_range: ((min_h, max_h), (min_w, max_w)) of the images, in pixels.
    """
    json_path, image_dir = split_paths(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    rng = np.random.RandomState(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height = int(rng.randint(size_range[0][0], size_range[0][1] + 1))
        width = int(rng.randint(size_range[1][0], size_range[1][1] + 1))
        image, objects = render_image(rng, height, width, max_objects)
        file_name = f"{image_id:06d}.jpg"
        if not cv2.imwrite(os.path.join(image_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {os.path.join(image_dir, file_name)}")
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in objects:
            poly = obj["polygon"].clip([0, 0], [width, height])
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": obj["category_id"],
                "bbox": [round(float(x0), 2), round(float(y0), 2),
                         round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                "area": round(float(cv2.contourArea(poly.astype(np.float32))), 2),
                "iscrowd": 0,
                "segmentation": [[round(float(v), 2) for v in poly.reshape(-1)]],
            })
    coco = {
        "info": {"description": f"sact-det synthetic shapes, split {split}, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return json_path


def generate_dataset(root: str, num_train: int = 800, num_val: int = 100, seed: int = 0,
                     **kwargs) -> Dict[str, str]:
    """Writes the ``train`` and ``val`` splits under ``root``; returns their json paths."""
    return {
        "train": generate_split(root, "train", num_train, seed, **kwargs),
        "val": generate_split(root, "val", num_val, seed + 1, **kwargs),
    }
