"""Checkpoint loading that says which keys do not fit.

Detectron2's checkpointer loads ImageNet and Detectron2 checkpoints by name
(with its Caffe2/torchvision name-matching heuristics) but only *warns* when a
parameter is missing or has another shape, leaving it randomly initialised.
For the feature extractor and the res5 box head that silently ruins a run, so
here it is an error naming the keys. The halting branches are the expected
exception: they are new parameters, reported as newly initialised. Other head
layers (e.g. a box predictor for another number of classes) keep Detectron2's
warn-and-skip behaviour, which fine-tuning relies on.

No checkpoint runs code while it is read: Detectron2 reads ``.pkl`` files with
plain ``pickle.load``, which calls whatever callable the file names; here every
file, ``MODEL.WEIGHTS`` or the one ``last_checkpoint`` names, goes through
:mod:`sact_det.utils.safe_load` (a restricted unpickler for ``.pkl``,
``torch.load(weights_only=True)`` for the rest), and anything but weights data is
refused, naming the file and what it asked for.

A classifier's checkpoint (the ImageNet stage) loads into a detector with its
res5 moved into the box head (:mod:`sact_det.engine.classifier_weights`).

Files that are not checkpoints, a missing file, a directory, a URL that cannot
be downloaded and an empty or dangling ``last_checkpoint`` are errors that name
the file. Checkpoints and ``last_checkpoint`` are written to a temporary file and
renamed, so a run killed while saving leaves the previous checkpoint as the last
one, never half a file.
"""
import hashlib
import io
import os
from typing import List

import torch

from detectron2.checkpoint import DetectionCheckpointer

from sact_det.engine.classifier_weights import adapt_classifier_checkpoint
from sact_det.utils.errors import InputError, InputFileNotFoundError, InputValueError
from sact_det.utils.files import atomic_path
from sact_det.utils.safe_load import (UnsafeCheckpointError, is_binary_checkpoint, load_pickle_weights,
                                      load_torch_weights)

__all__ = ["BrokenWeightsError", "CheckpointMismatchError", "SACTCheckpointer", "check_finite_weights", "save_weights_only"]

LAST_CHECKPOINT = "last_checkpoint"  # fvcore's name for the file naming the latest checkpoint

# Parameters that must come from the checkpoint when one is given.
REQUIRED_PREFIXES = ("backbone.", "roi_heads.res5.", "roi_heads.postnorm.")


class CheckpointMismatchError(InputError, RuntimeError):
    """A checkpoint whose feature-extractor or res5 weights do not fit the model."""


class BrokenWeightsError(InputError, ValueError):
    """Weights that hold NaN or infinity before anything was computed with them."""


def check_finite_weights(model, source: str) -> None:
    """Raises :class:`BrokenWeightsError` naming ``source`` (where the weights
    came from) when a floating-point parameter or buffer of ``model`` holds NaN
    or infinity: no learning rate trains such weights."""
    bad = [name for name, value in model.state_dict().items()
           if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise BrokenWeightsError(
            f"the weights are broken: {len(bad)} tensor(s) of {source} hold NaN or infinity before training "
            f"starts (e.g. {', '.join(bad[:3])}); a lower learning rate cannot help: give other weights "
            "(MODEL.WEIGHTS), or put the name of an earlier good checkpoint into OUTPUT_DIR/last_checkpoint")


def _is_required(key: str) -> bool:
    return key.startswith(REQUIRED_PREFIXES) and ".halting." not in key


class SACTCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that raises :class:`CheckpointMismatchError` when
    a feature-extractor or res5 weight is missing from the checkpoint or has
    another shape, and logs the halting parameters it initialises."""

    loaded_from = None  # the file or URL of the last load, if any

    def load(self, path, *args, **kwargs):
        self.loaded_from = path or None
        if path and "://" in path:
            self._download(path)
        elif path and not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            error = InputValueError if os.path.isdir(path) else InputFileNotFoundError
            raise error(f"checkpoint {path} {what}: expected a checkpoint file (MODEL.WEIGHTS or "
                        f"OUTPUT_DIR/{LAST_CHECKPOINT})")
        return super().load(path, *args, **kwargs)

    def _download(self, url: str) -> None:
        """Fetches ``url`` into the local cache, where Detectron2's ``load`` then
        finds it; an error naming the URL when it cannot be had."""
        try:
            self.path_manager.get_local_path(url.split("?", 1)[0])  # Detectron2 drops the query too
        except Exception as e:  # URLError, HTTPError, socket errors, a handler that does not exist
            reason = getattr(e, "reason", None) or e
            raise InputFileNotFoundError(f"checkpoint {url} cannot be downloaded ({reason}); download it "
                                         "yourself and give the local file as MODEL.WEIGHTS") from None

    def _load_file(self, filename):
        """Detectron2's ``_load_file`` (the same dicts for ``.pkl``, ``.pyth`` and
        torch files) reading through :mod:`sact_det.utils.safe_load`."""
        try:
            if filename.endswith(".pkl"):
                return self._from_pickle(filename, load_pickle_weights(filename))
            if filename.endswith(".pyth"):
                return _from_pycls(filename, load_torch_weights(filename))
            return super()._load_file(filename)  # torch files: reads through _torch_load
        except UnsafeCheckpointError:
            raise
        except Exception as e:
            if is_binary_checkpoint(filename):
                raise  # a checkpoint that fails for another reason: keep its explanation
            raise InputValueError(f"{filename} is not a checkpoint: expected a file written by torch.save "
                                  "(.pth) or a Detectron2/Caffe2 pickle (.pkl)") from e

    def _torch_load(self, filename):
        return load_torch_weights(filename)

    def _from_pickle(self, filename, data):
        """What Detectron2 makes of a ``.pkl``'s content: a Detectron2 model-zoo
        file as it is, else Caffe2/Detectron1 blobs for name matching."""
        if not isinstance(data, dict):
            raise InputValueError(f"{filename} holds a pickled {type(data).__name__}, expected a dict of weights")
        if "model" in data and "__author__" in data:
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        if "blobs" in data:  # detection models have "blobs", ImageNet models do not
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

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
        adapt_classifier_checkpoint(checkpoint, self.model.state_dict().keys(), self.loaded_from, self.logger)
        incompatible = super()._load_model(checkpoint)
        if incompatible is None:
            return incompatible
        wrong_shape = [f"{key}: checkpoint {tuple(ckpt)} vs model {tuple(model)}"
                       for key, ckpt, model in incompatible.incorrect_shapes if _is_required(key)]
        missing = [key for key in incompatible.missing_keys if _is_required(key)]
        if wrong_shape or missing:
            lines: List[str] = [f"checkpoint {self.loaded_from!r} does not fit the model:"]
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


def _from_pycls(filename, data):
    """What Detectron2 makes of a pycls ``.pyth`` checkpoint."""
    if not isinstance(data, dict) or "model_state" not in data:
        raise InputValueError(f"cannot load {filename}: pycls checkpoints (.pyth) hold 'model_state'")
    model_state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}


def save_weights_only(checkpoint: str, output: str) -> str:
    """Writes the model weights of a training ``checkpoint`` (``model_final.pth``:
    weights, optimizer and scheduler state) to ``output`` as ``{"model": ...}``,
    what Detectron2 loads as ``MODEL.WEIGHTS``, a third of the size; returns the
    SHA-256 of ``output``, which depends on the weights only."""
    weights = load_torch_weights(checkpoint)
    if not isinstance(weights, dict) or not isinstance(weights.get("model"), dict):
        raise InputValueError(f"{checkpoint} has no model weights (expected a checkpoint written by training)")
    # torch.save names the zip archive's folder after the file it writes (here a
    # temporary name with the process id); written through a buffer, the folder
    # is always "archive", so the same weights give the same bytes and checksum.
    buffer = io.BytesIO()
    torch.save({"model": weights["model"]}, buffer)
    data = buffer.getvalue()
    with atomic_path(output) as temporary, open(temporary, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()
