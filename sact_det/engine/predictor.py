"""``DefaultPredictor``-style inference for SACT detectors."""
import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.modeling import build_model

from sact_det.data.datasets import model_metadata
from sact_det.engine.checkpoint import SACTCheckpointer
from sact_det.utils.errors import InputValueError
from sact_det.utils.noise import known_noise_silenced

__all__ = ["SACTPredictor", "build_inference_model"]


def build_inference_model(cfg):
    """The detector of ``cfg`` in eval mode, with ``MODEL.WEIGHTS`` loaded by
    :class:`SACTCheckpointer` when given."""
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SACTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


class SACTPredictor:
    """Detectron2's ``DefaultPredictor`` for SACT detectors and classifiers: it takes what
    ``DefaultPredictor`` takes (a BGR ``uint8 [H, W, 3]`` array, as
    ``cv2.imread`` gives, converted to ``cfg.INPUT.FORMAT``) and applies the
    config's test-time resizing; weights are loaded with :class:`SACTCheckpointer`
    (which names the keys of a checkpoint that does not fit); the SACT report is
    returned with the detections (a classifier: with its ``scores``, on the
    whole image resized as ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST`` say).

    ``metadata`` names the classes (:func:`~sact_det.data.datasets.model_metadata`:
    the first of ``DATASETS.TEST``, else of ``DATASETS.TRAIN``, also a dataset of
    ``DATASETS.COCO_JSON`` or one registered with ``register_coco_instances``).
    A dataset whose number of categories differs from ``MODEL.ROI_HEADS.NUM_CLASSES``
    is an error here, before the model is built. PyTorch's and Detectron2's
    notices at the first inference are silenced (:mod:`sact_det.utils.noise`).
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be BGR or RGB for the predictor, got {self.input_format!r}")
        self.metadata = model_metadata(self.cfg)
        names = self.metadata.get("thing_classes")
        if names is not None and len(names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise InputValueError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, but dataset "
                f"{self.metadata.name!r}, which names the classes, has {len(names)} categories; set "
                "DATASETS.TEST to the dataset the model was trained on, or NUM_CLASSES to its number of "
                "categories")
        self.model = build_inference_model(self.cfg)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    @torch.no_grad()
    def __call__(self, original_image: np.ndarray, resize: bool = True) -> dict:
        """Model output for one BGR image: ``instances`` at its resolution and
        ``sact`` (:class:`~sact_det.modeling.report.SACTReport`: its ``image_size``
        and maps at the network input's scale, see
        :meth:`~sact_det.modeling.report.SACTReport.ponder_map_on_image`).
        ``resize=False`` feeds the image at its own size."""
        if original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(f"expected a BGR image of shape (H, W, 3), got shape {original_image.shape}")
        image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image) if resize else image
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
        with known_noise_silenced():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]

    def ponder_output(self, original_image: np.ndarray, resize: bool = True) -> dict:
        """The output of :meth:`__call__` (BGR image) for callers that need the
        ponder maps: a clear error when the model has none."""
        output = self(original_image, resize)
        if not output["sact"].adaptive:
            raise ValueError("the model is not adaptive (MODEL.SACT.TYPE none): it has no ponder cost maps")
        return output
