"""The trainer, in Detectron2's style (``tools/train_net.py`` runs it through :mod:`.train_net`).

``SACTTrainer`` is Detectron2's ``DefaultTrainer`` with what a SACT run needs:
the COCO evaluator plus the SACT FLOPs/ponder evaluator (for the classifier,
``MODEL.META_ARCHITECTURE SACTClassifier``: labelled images and the top-1/top-5
evaluator with the same report), a console line with
each block's ponder cost and units every logging period, a checkpointer that
names the keys of a checkpoint that does not fit, multi-process training on
CPUs as well as GPUs, and runs that lose nothing:

* exact resume: the training batches and every random draw are functions of
  (SEED, iteration) (:mod:`sact_det.data.sampling`), so a run resumed from any
  checkpoint continues as the uninterrupted run would have;
* only good checkpoints are written (:class:`FiniteCheckpointer`); a diverging
  run stops naming the last good one and the exact command to continue from it
  with a lower learning rate, which ``--resume`` then applies, and is not
  evaluated; weights that are broken (NaN, infinity) before training starts are
  an error that says so;
* one training run per OUTPUT_DIR (a lock), and worker processes that end when
  their launcher is killed;
* images of any bit depth read by the one reader, unreadable ones skipped and
  named; annotations checked when a dataset is loaded, boxes clipped for training.
"""
import logging
import os
import weakref
from typing import Optional

import torch

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils.logger import setup_logger

from sact_det.config import is_classifier
from sact_det.data.build import training_dataset_dicts
from sact_det.data.cls_mapper import ClassificationMapper
from sact_det.data.mapper import ReportingDatasetMapper
from sact_det.data.sampling import ResumableTrainLoader, build_resumable_train_loader
from sact_det.engine.checkpoint import SACTCheckpointer, check_finite_weights
from sact_det.engine.hooks import FinishedEvalHook, FiniteCheckpointer, IterationSeeds, SACTMetricPrinter
from sact_det.evaluation.classification import ClassificationEvaluator
from sact_det.evaluation.evaluator import SACTEvaluator
from sact_det.utils.env import has_compiled_ops
from sact_det.utils.errors import InputError, InputValueError
from sact_det.utils.noise import quiet_tensorflow_logs

__all__ = ["SACTTrainer", "TrainingDivergedError"]

logger = logging.getLogger("sact_det")


class TrainingDivergedError(InputError, RuntimeError):
    """The losses or weights of a run became unbounded. One line: ``summary``
    (what diverged, at which iteration, the last good checkpoint) and ``advice``
    (how to go on, with ``suggested_lr``, half the run's learning rate)."""

    def __init__(self, summary: str, advice: str, suggested_lr: float, last_checkpoint: Optional[str] = None):
        super().__init__(f"{summary}; {advice}")
        self.summary, self.advice = summary, advice
        self.suggested_lr, self.last_checkpoint = suggested_lr, last_checkpoint


class SACTTrainer(DefaultTrainer):
    """``DefaultTrainer`` for SACT detectors; see the module docstring."""

    def __init__(self, cfg):
        super(DefaultTrainer, self).__init__()  # TrainerBase: DefaultTrainer's own set-up follows
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SEED < 0:  # one seed for the data order and the model's draws, the same on every rank
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SEED = comm.shared_random_seed()
            cfg.freeze()
            logger.info(f"SEED -1: drew seed {cfg.SEED}; resuming is exact only with a fixed SEED")
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if comm.get_world_size() > 1:
            # Every parameter takes part in every step (dense masked training), so
            # no unused-parameter search; device_ids only for GPU models.
            on_gpu = next(model.parameters()).is_cuda
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[comm.get_local_rank()] if on_gpu else None,
                broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SACTCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        def ours(hook):
            if isinstance(hook, hooks.PeriodicCheckpointer):
                return FiniteCheckpointer(hook.checkpointer, hook.period, hook.max_iter, hook.max_to_keep)
            return FinishedEvalHook.of(hook) if isinstance(hook, hooks.EvalHook) else hook
        return [IterationSeeds(self.cfg.SEED)] + [ours(h) for h in super().build_hooks()]

    def build_writers(self):
        quiet_tensorflow_logs()  # before TensorBoard's writer imports TensorFlow, where it is installed
        return super().build_writers() + [SACTMetricPrinter()]

    def resume_or_load(self, resume=True, lr_from_config=False):
        """Detectron2's resume (weights, optimizer, scheduler, iteration) plus the
        position of the training data stream.

        Detectron2 restores the base learning rates of the checkpoint's
        scheduler, which would ignore a lowered ``SOLVER.BASE_LR``. With
        ``lr_from_config`` (``main`` sets it when ``SOLVER.BASE_LR`` is on the
        command line) a resumed run takes its base learning rates from the
        config instead, and logs them; the schedule (warm-up, steps) goes on at
        the resumed iteration.
        """
        config_lrs = list(self.scheduler.base_lrs)
        super().resume_or_load(resume=resume)
        if isinstance(self.data_loader, ResumableTrainLoader):
            self.data_loader.start_at(self.start_iter)
        resumed = resume and self.start_iter > 0
        if resumed and lr_from_config:
            checkpoint_lr = self.scheduler.base_lrs[0]
            self.scheduler.base_lrs = config_lrs
            for group, base_lr, lr in zip(self.optimizer.param_groups, config_lrs, self.scheduler.get_lr()):
                group["initial_lr"], group["lr"] = base_lr, lr
            logger.info(f"SOLVER.BASE_LR {self.cfg.SOLVER.BASE_LR:g} from the command line: base learning "
                        f"rate {config_lrs[0]:g} instead of the checkpoint's {checkpoint_lr:g}; learning rate "
                        f"{self.optimizer.param_groups[0]['lr']:g} at iteration {self.start_iter}")

    def train(self):
        """Trains; returns the results of the evaluation at the end of training
        (Detectron2 returns them only when TEST.EXPECTED_RESULTS is set). Weights
        that hold NaN or infinity before the first step are an error that says
        so; a run that diverges ends with :class:`TrainingDivergedError`."""
        check_finite_weights(self.model, self.checkpointer.loaded_from or "the initial weights")
        try:
            super().train()
            return getattr(self, "_last_eval_results", None)
        except FloatingPointError as e:  # DivergedError, or Detectron2's non-finite loss
            lr = self.cfg.SOLVER.BASE_LR / 2
            last = (self.checkpointer.get_checkpoint_file()
                    if self.checkpointer.has_checkpoint() else None)
            what = str(e).strip().splitlines()[0]  # Detectron2's non-finite loss message goes on with the losses
            summary = (f"training diverged at iteration {self.iter}: {what}; "
                       + (f"the last good checkpoint is {last}" if last else "no good checkpoint was written"))
            clip = "" if self.cfg.SOLVER.CLIP_GRADIENTS.ENABLED else " (or with SOLVER.CLIP_GRADIENTS.ENABLED True)"
            advice = (("continue from it (--resume)" if last else "start again")
                      + f" with half the learning rate, SOLVER.BASE_LR {lr!r}{clip}")
            raise TrainingDivergedError(summary, advice, lr, last) from e

    @classmethod
    def build_train_loader(cls, cfg):
        """Training batches that are a function of (SEED, iteration) (exact resume,
        :mod:`sact_det.data.sampling`) for ``DATALOADER.SAMPLER_TRAIN``
        TrainingSampler; Detectron2's loader for its other samplers. The
        classifier (``MODEL.META_ARCHITECTURE SACTClassifier``) reads labelled
        images (:mod:`sact_det.data.classification`), the detector boxes."""
        classifier = is_classifier(cfg)
        if classifier:
            mapper = ClassificationMapper(cfg, True)
            dataset_dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        else:
            mapper = ReportingDatasetMapper(cfg, True)
            dataset_dicts = training_dataset_dicts(cfg)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN}: Detectron2's data loader; "
                           "a resumed run will not see the batches the uninterrupted run would have")
            return build_detection_train_loader(cfg, dataset=dataset_dicts, mapper=mapper)
        world_size = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world_size:
            raise InputValueError(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} must be a multiple of the "
                                  f"number of processes ({world_size})")
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_resumable_train_loader(
            dataset_dicts, mapper, cfg.SOLVER.IMS_PER_BATCH // world_size, seed, cfg.DATALOADER.NUM_WORKERS,
            comm.get_rank(), world_size, cfg.DATALOADER.ASPECT_RATIO_GROUPING and not classifier, cfg.DATASETS.TRAIN)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if is_classifier(cfg):  # crops of one size: TEST.IMS_PER_BATCH at a time
            return build_detection_test_loader(DatasetCatalog.get(dataset_name), mapper=ClassificationMapper(cfg, False),
                                               batch_size=cfg.TEST.IMS_PER_BATCH,
                                               num_workers=cfg.DATALOADER.NUM_WORKERS)
        return build_detection_test_loader(cfg, dataset_name, mapper=ReportingDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if is_classifier(cfg):
            return ClassificationEvaluator(dataset_name, output_dir=output_folder)
        return DatasetEvaluators([
            # The official pycocotools protocol; Detectron2's faster C++ version
            # needs its compiled ops, which sact-det does not require.
            COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops()),
            SACTEvaluator(dataset_name, output_dir=output_folder),
        ])
