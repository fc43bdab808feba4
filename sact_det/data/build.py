"""The training dataset as sact-det trains on it."""
from detectron2.data.build import filter_images_with_only_crowd_annotations, get_detection_dataset_dicts

from sact_det.data.annotations import boxes_for_training
from sact_det.utils.errors import InputValueError

__all__ = ["training_dataset_dicts"]


def training_dataset_dicts(cfg):
    """The training images of ``DATASETS.TRAIN``: Detectron2's dataset dicts with
    boxes clipped to their image and degenerate or wholly outside boxes dropped
    (:func:`~sact_det.data.annotations.boxes_for_training`), then, with
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``, images left without boxes removed."""
    dataset_dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=False,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
    dataset_dicts = boxes_for_training(dataset_dicts)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    if not dataset_dicts:
        raise InputValueError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no image with a usable box")
    return dataset_dicts
