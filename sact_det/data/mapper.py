"""The dataset mapper of every sact-det loader."""
import copy
import logging

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from sact_det.data.images import read_image_rgb
from sact_det.utils.errors import ImageReadError, InputValueError

__all__ = ["ReportingDatasetMapper"]

logger = logging.getLogger("sact_det")


class ReportingDatasetMapper(DatasetMapper):
    """Detectron2's mapper (augmentations, boxes), reading images with
    :func:`~sact_det.data.images.read_image_rgb`, the reader of every sact-det
    tool (any bit depth and channel count). An image that cannot be read is
    named: in training it is skipped with a warning (the data loader takes
    another image); in evaluation it is an error, since skipping would change
    the metric. An image whose size is not the one its annotation gives (e.g.
    width and height swapped) is an error naming the file and both sizes, in
    training too: its boxes would be misplaced. Semantic segmentation inputs are
    not supported."""

    def __call__(self, dataset_dict):
        try:
            return self._map(dataset_dict)
        except OSError as e:  # missing, truncated or not an image
            file_name = dataset_dict.get("file_name")
            reason = str(e).replace(f"cannot read image {file_name}: ", "")  # read_image_rgb's message names it
            message = f"could not read image {file_name}: {reason}"
            if self.is_train:
                logger.warning(message + "; skipping it")
                return None
            raise ImageReadError(message + " (evaluation needs every image of the dataset)") from e

    def _map(self, dataset_dict):
        """``DatasetMapper.__call__``'s steps with sact-det's image reader."""
        dataset_dict = copy.deepcopy(dataset_dict)
        rgb = read_image_rgb(dataset_dict["file_name"])
        image = utils.convert_PIL_to_numpy(Image.fromarray(rgb), self.image_format)
        _check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image.shape[:2], transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict


def _check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """Detectron2's ``check_image_size`` (fills in a missing width/height), with
    an error that names the image, its annotated and real sizes, and a swap."""
    height, width = image.shape[:2]
    annotated = (dataset_dict.get("width", width), dataset_dict.get("height", height))
    if annotated != (width, height):
        swapped = "; width and height are swapped" if annotated == (height, width) else ""
        raise InputValueError(f"image {dataset_dict['file_name']}: its annotation gives \"width\": {annotated[0]}, "
                              f"\"height\": {annotated[1]}, but the image is {width} wide and {height} high"
                              f"{swapped}; correct them in the dataset's annotation file")
    dataset_dict.setdefault("width", width)
    dataset_dict.setdefault("height", height)
