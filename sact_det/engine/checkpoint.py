"""Checkpoint loading that says which keys do not fit.

Detectron2's checkpointer loads ImageNet and Detectron2 checkpoints by name
(with its Caffe2/torchvision name-matching heuristics) but only *warns* when a
parameter is missing or has another shape, leaving it randomly initialised.
For the feature extractor and the res5 box head that silently ruins a run, so
here it is an error naming the keys. The halting branches are the expected
exception: they are new parameters, reported as newly initialised. Other head
layers (e.g. a box predictor for another number of classes) keep Detectron2's
warn-and-skip behaviour, which fine-tuning relies on.

A classifier's checkpoint (the ImageNet stage) loads into a detector with its
res5 moved into the box head (:mod:`sact_det.engine.classifier_weights`).

Files that are not checkpoints, a missing file and an empty or dangling
``last_checkpoint`` are errors that name the file. Checkpoints and
``last_checkpoint`` are written to a temporary file and renamed, so a run killed
while saving leaves the previous checkpoint as the last one, never half a file.
"""
import os
import zipfile
from typing import List

import torch

from detectron2.checkpoint import DetectionCheckpointer

from sact_det.engine.classifier_weights import adapt_classifier_checkpoint
from sact_det.utils.errors import InputError, InputFileNotFoundError, InputValueError
from sact_det.utils.files import atomic_path

__all__ = ["CheckpointMismatchError", "SACTCheckpointer"]

LAST_CHECKPOINT = "last_checkpoint"  # fvcore's name for the file naming the latest checkpoint

# Parameters that must come from the checkpoint when one is given.
REQUIRED_PREFIXES = ("backbone.", "roi_heads.res5.", "roi_heads.postnorm.")


class CheckpointMismatchError(InputError, RuntimeError):
    """A checkpoint whose feature-extractor or res5 weights do not fit the model."""


def _is_required(key: str) -> bool:
    return key.startswith(REQUIRED_PREFIXES) and ".halting." not in key


class SACTCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that raises :class:`CheckpointMismatchError` when
    a feature-extractor or res5 weight is missing from the checkpoint or has
    another shape, and logs the halting parameters it initialises."""

    _source = "<checkpoint>"

    def load(self, path, *args, **kwargs):
        self._source = path
        if path and "://" not in path and not os.path.isfile(path):
            raise InputFileNotFoundError(f"checkpoint {path} does not exist (MODEL.WEIGHTS or "
                                         f"OUTPUT_DIR/{LAST_CHECKPOINT})")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except Exception as e:
            if _looks_like_checkpoint(filename):
                raise  # a checkpoint that fails for another reason: keep torch's explanation
            raise InputValueError(f"{filename} is not a checkpoint: expected a file written by torch.save "
                                  "(.pth) or a Detectron2/Caffe2 pickle (.pkl)") from e

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``OUTPUT_DIR/last_checkpoint`` names; an error naming
        the file when it is empty or names a file that does not exist."""
        path = super().get_checkpoint_file()
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        if os.path.isfile(tag) and not os.path.isfile(path):
            named = os.path.basename(path)
            raise InputFileNotFoundError(
                f"{tag} {f'names {named}, which does not exist' if named else 'is empty'}: expected the "
                f"file name of a checkpoint in {self.save_dir} (e.g. model_0000999.pth); write the one "
                "to resume from into it, or delete it to start from MODEL.WEIGHTS")
        return path

    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``save`` (model, checkpointables, ``kwargs``), written atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        with atomic_path(path) as temporary, open(temporary, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_path(os.path.join(self.save_dir, LAST_CHECKPOINT)) as temporary, open(temporary, "w") as f:
            f.write(last_filename_basename)

    def _load_model(self, checkpoint):
        # A classifier's checkpoint into a detector: res5 -> the box head (sact_det.engine.classifier_weights).
        adapt_classifier_checkpoint(checkpoint, self.model.state_dict().keys(), self._source, self.logger)
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


def _looks_like_checkpoint(path: str) -> bool:
    """Whether the file is a zip archive (torch.save) or starts like a binary pickle."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # the PROTO opcode of pickle protocols >= 2
