"""The training hooks of :class:`~sact_det.engine.trainer.SACTTrainer`: the ponder
console line, checkpoints written only when good, and per-iteration seeds."""
import logging
import random
import statistics
from collections import deque

import numpy as np
import torch

import detectron2.utils.comm as comm
from detectron2.engine import HookBase, hooks
from detectron2.utils.events import EventWriter, get_event_storage

from sact_det.data.sampling import MODEL, derived_seed

__all__ = ["SACTMetricPrinter", "DivergedError", "FiniteCheckpointer", "FinishedEvalHook", "IterationSeeds"]

logger = logging.getLogger("sact_det")


class SACTMetricPrinter(EventWriter):
    """Logs each block's ponder cost and mean units (medians over the window),
    so that the halting policy can be watched as it develops."""

    def __init__(self, window_size: int = 20):
        self._window_size = window_size

    def write(self):
        storage = get_event_storage()
        histories = storage.histories()
        parts = []
        for kind in ("ponder_cost", "units"):
            keys = sorted(k for k in histories if k.startswith(f"sact/{kind}/"))
            if keys:
                values = "  ".join(f"{k.rsplit('/', 1)[1]}: {histories[k].median(self._window_size):.3f}"
                                   for k in keys)
                parts.append(f"{kind} {values}")
        if parts:
            logger.info(f"iter: {storage.iter}  SACT " + " | ".join(parts))


class DivergedError(FloatingPointError):
    """Raised by :class:`FiniteCheckpointer`: what diverged (the trainer adds the iteration)."""


class FiniteCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's periodic checkpointer that writes only good checkpoints, so
    that a resume from the last one does not diverge at once.

    A checkpoint is good when

    1. every parameter is finite; otherwise the run has diverged and stops
       (:class:`DivergedError`, a ``FloatingPointError`` as Detectron2 raises
       for a non-finite loss), and
    2. every ``total_loss`` since the previous checkpoint was at most
       ``LOSS_FACTOR`` (10) times the median of the reference: the last
       ``WINDOW`` (100) losses that passed this test. Out-of-bounds losses never
       enter the reference, so a run stuck at a high loss does not become the
       norm. Otherwise the checkpoint is skipped with a warning, and training
       goes on: the next one is written if the losses are back in bounds.

    The run has diverged, and stops (:class:`DivergedError`), when the losses
    stayed out of bounds for a whole checkpoint period, or when the final
    checkpoint cannot be written: training would otherwise end with no model
    (and evaluate the damaged weights).

    The losses are those of the main process (Detectron2 reduces them there),
    the only one that writes checkpoints.
    """

    LOSS_FACTOR = 10.0
    WINDOW = 100

    def before_train(self):
        super().before_train()
        self._reference = deque(maxlen=self.WINDOW)
        self._spike = None  # (iteration, loss, bound) of the first loss out of bounds since the last checkpoint
        self._streak = 0  # losses out of bounds in a row, up to the latest
        self._latest = None  # (iteration, loss) of the latest loss

    def _check_loss(self, iteration: int) -> None:
        history = get_event_storage().histories().get("total_loss")
        if history is None or history.values()[-1][1] != iteration:
            return  # not the main process, or no loss logged at this iteration
        loss = history.values()[-1][0]
        bound = self.LOSS_FACTOR * statistics.median(self._reference) if self._reference else float("inf")
        self._latest = (iteration, loss)
        if loss <= bound:
            self._reference.append(loss)
            self._streak = 0
            return
        self._streak += 1
        if self._spike is None:
            self._spike = (iteration, loss, bound)

    def _bounds(self, bound: float) -> str:
        return f"{bound:.4g} ({self.LOSS_FACTOR:g} x the median of the earlier losses)"

    def after_step(self):
        iteration = self.trainer.iter
        self._check_loss(iteration)
        final = iteration >= self.max_iter - 1
        if not ((iteration + 1) % self.period == 0 or final):
            return
        bad = [name for name, p in self.trainer.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise DivergedError(f"parameters became non-finite ({len(bad)} tensors, e.g. {bad[:3]})")
        if self._spike is not None:
            at, loss, bound = self._spike
            if self._streak >= self.period:  # a whole period out of bounds: not a spike
                latest, latest_loss = self._latest
                raise DivergedError(f"total_loss stayed above {self._bounds(bound)} from iteration "
                                    f"{latest - self._streak + 1} on ({latest_loss:.4g} at iteration {latest})")
            spike = f"total_loss reached {loss:.4g} at iteration {at}, above {self._bounds(bound)}"
            if final:
                raise DivergedError(f"{spike}, so the final weights are not good")
            logger.warning(f"no checkpoint at iteration {iteration}: {spike}; the weights may be damaged. The last "
                           f"good checkpoint stays {self.checkpointer.get_checkpoint_file() or 'none'}")
        else:
            super().after_step()
        self._spike = None


class FinishedEvalHook(hooks.EvalHook):
    """Detectron2's ``EvalHook``, whose evaluation at the end runs only when
    training finished. Detectron2's runs in ``after_train`` also when the last
    iteration raised (a diverged run's damaged weights would be evaluated)."""

    @classmethod
    def of(cls, hook: hooks.EvalHook) -> "FinishedEvalHook":
        return cls(hook._period, hook._func, hook._eval_after_train)

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter:  # Detectron2 sets iter = max_iter when training finished
            self._eval_after_train = False
        super().after_train()


class IterationSeeds(HookBase):
    """Seeds the random draws of the model (RPN and ROI sampling) per (seed,
    rank, iteration), so that a resumed run draws what the uninterrupted run drew."""

    def __init__(self, seed: int):
        self._seed = seed

    def before_step(self):
        seed = derived_seed(self._seed, MODEL, comm.get_rank(), self.trainer.iter)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
