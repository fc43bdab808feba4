"""Checkpoint loading that says which keys do not fit.

Detectron2's checkpointer loads ImageNet and Detectron2 checkpoints by name
(with its Caffe2/torchvision name-matching heuristics) but only *warns* when a
parameter is missing or has another shape, leaving it randomly initialised.
For the feature extractor and the res5 box head that silently ruins a run, so
here it is an error naming the keys. The halting branches are the expected
exception: they are new parameters, reported as newly initialised. Other head
layers (e.g. a box predictor for another number of classes) keep Detectron2's
warn-and-skip behaviour, which fine-tuning relies on.
"""
from typing import List

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["CheckpointMismatchError", "SACTCheckpointer"]

# Parameters that must come from the checkpoint when one is given.
REQUIRED_PREFIXES = ("backbone.", "roi_heads.res5.")


class CheckpointMismatchError(RuntimeError):
    pass


def _is_required(key: str) -> bool:
    return key.startswith(REQUIRED_PREFIXES) and ".halting." not in key


class SACTCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that raises :class:`CheckpointMismatchError` when
    a feature-extractor or res5 weight is missing from the checkpoint or has
    another shape, and logs the halting parameters it initialises."""

    _source = "<checkpoint>"

    def load(self, path, *args, **kwargs):
        self._source = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if incompatible is None:
            return incompatible
        wrong_shape = [f"{key}: checkpoint {tuple(ckpt)} vs model {tuple(model)}"
                       for key, ckpt, model in incompatible.incorrect_shapes if _is_required(key)]
        missing = [key for key in incompatible.missing_keys if _is_required(key)]
        if wrong_shape or missing:
            lines: List[str] = [f"checkpoint {self._source!r} does not fit the model:"]
            if wrong_shape:
                lines.append(f"{len(wrong_shape)} parameter(s) with another shape:")
                lines += ["  " + s for s in wrong_shape[:20]]
            if missing:
                lines.append(f"{len(missing)} parameter(s) not found in the checkpoint "
                             "(or dropped by name matching because of their shape):")
                lines += ["  " + k for k in missing[:20]]
            if len(wrong_shape) > 20 or len(missing) > 20:
                lines.append("  ...")
            lines.append("Check MODEL.RESNETS (DEPTH, widths, STRIDE_IN_1X1), MODEL.SACT.NUM_UNITS "
                         "and MODEL.WEIGHTS.")
            raise CheckpointMismatchError("\n".join(lines))
        halting = [k for k in incompatible.missing_keys if ".halting." in k]
        if halting:
            self.logger.info(f"{len(halting)} halting-branch parameters are newly initialised "
                             "(section 4.1: halting weights are initialised randomly): " + ", ".join(halting))
        return incompatible
