"""``DefaultPredictor``-style inference for SACT detectors."""
import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .checkpoint import SACTCheckpointer

__all__ = ["SACTPredictor"]


class SACTPredictor:
    """Detectron2's ``DefaultPredictor`` for SACT models: test-time resizing of
    the config, weights loaded with :class:`SACTCheckpointer`, and the SACT
    outputs returned with the detections."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if cfg.MODEL.WEIGHTS:
            SACTCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")

    @torch.no_grad()
    def __call__(self, image_rgb: np.ndarray, resize: bool = True) -> dict:
        """Model output for one RGB image: ``instances`` at its resolution and
        ``sact``. ``resize=False`` feeds the image at its own size."""
        image = image_rgb[:, :, ::-1] if self.input_format == "BGR" else image_rgb
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image) if resize else image
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
        return self.model([{"image": tensor, "height": height, "width": width}])[0]

    def ponder_output(self, image_rgb: np.ndarray, resize: bool = True) -> dict:
        """The output of :meth:`__call__` for callers that need the ponder maps:
        a clear error when the model has none."""
        output = self(image_rgb, resize)
        if not output["sact"].adaptive:
            raise ValueError("the model is not adaptive (MODEL.SACT.TYPE none): it has no ponder cost maps")
        return output
