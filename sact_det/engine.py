"""Training and evaluation in Detectron2's style (``tools/train_net.py`` calls this).

``SACTTrainer`` is Detectron2's ``DefaultTrainer`` with what a SACT run needs:
the COCO evaluator plus the SACT FLOPs/ponder evaluator, a console line with
each block's ponder cost and units every logging period, a checkpointer that
names the keys of a checkpoint that does not fit, multi-process training on
CPUs as well as GPUs, and runs that lose nothing:

* exact resume: the training batches and every random draw are functions of
  (SEED, iteration) (:mod:`sact_det.data.sampling`), so a run resumed from any
  checkpoint continues as the uninterrupted run would have;
* only good checkpoints are written (:class:`FiniteCheckpointer`); a diverging
  run stops naming the last good one and the exact command to continue from it
  with a lower learning rate, which ``--resume`` then applies;
* one training run per OUTPUT_DIR (a lock), and worker processes that end when
  their launcher is killed;
* images of any bit depth read by the one reader, unreadable ones skipped and
  named; annotations checked when a dataset is loaded, boxes clipped for training.
"""
import contextlib
import copy
import logging
import os
import random
import shlex
import statistics
import sys
import weakref
from collections import deque

import numpy as np
import torch
from PIL import Image

import detectron2.utils.comm as comm
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import filter_images_with_only_crowd_annotations, get_detection_dataset_dicts
from detectron2.engine import (AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, default_argument_parser,
                               default_setup, hooks, launch)
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, verify_results
from detectron2.utils.events import EventWriter, get_event_storage
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from .checkpoint import SACTCheckpointer
from .config import fall_back_to_cpu, get_sact_cfg
from .data import (SYNTHETIC_SPLITS, check_datasets_exist, ensure_synthetic, register_config_datasets,
                   register_synthetic)
from .data.annotations import boxes_for_training, validate_on_load
from .data.images import read_image_rgb
from .data.sampling import MODEL, ResumableTrainLoader, build_resumable_train_loader, derived_seed
from .evaluation import SACTEvaluator
from .runs import OutputDirLock, exit_with_parent
from .tools_common import INPUT_ERROR_STATUS, InputError, InputValueError, ToolParser, load_config, run_tool

__all__ = ["SACTTrainer", "TrainingDivergedError", "FiniteCheckpointer", "build_config", "setup", "main",
           "argument_parser", "launch_main", "command_line", "training_dataset_dicts"]

logger = logging.getLogger("sact_det")


class TrainingDivergedError(InputError, RuntimeError):
    """The losses or weights of a run became unbounded. ``suggested_lr`` is the
    learning rate the message advises (half the run's)."""

    def __init__(self, message: str, suggested_lr: float):
        super().__init__(message)
        self.suggested_lr = suggested_lr


def has_compiled_ops() -> bool:
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


class ReportingDatasetMapper(DatasetMapper):
    """Detectron2's mapper (augmentations, boxes), reading images with
    :func:`~sact_det.data.images.read_image_rgb`, the reader of every sact-det
    tool (any bit depth and channel count). An image that cannot be read is
    named: in training it is skipped with a warning (the data loader takes
    another image); in evaluation it is an error, since skipping would change
    the metric. Semantic segmentation inputs are not supported."""

    def __call__(self, dataset_dict):
        try:
            return self._map(dataset_dict)
        except OSError as e:  # missing, truncated or not an image
            message = f"could not read image {dataset_dict.get('file_name')!r}: {e}"
            if self.is_train:
                logger.warning(message + "; skipping it")
                return None
            raise OSError(message) from e

    def _map(self, dataset_dict):
        """``DatasetMapper.__call__``'s steps with sact-det's image reader."""
        dataset_dict = copy.deepcopy(dataset_dict)
        rgb = read_image_rgb(dataset_dict["file_name"])
        image = utils.convert_PIL_to_numpy(Image.fromarray(rgb), self.image_format)
        utils.check_image_size(dataset_dict, image)
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


class FiniteCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's periodic checkpointer that writes only good checkpoints, so
    that a resume from the last one does not diverge at once.

    A checkpoint is good when

    1. every parameter is finite; otherwise the run has diverged and stops
       (``FloatingPointError``, as Detectron2 does for a non-finite loss), and
    2. every ``total_loss`` since the previous checkpoint was at most
       ``LOSS_FACTOR`` (10) times the median of the reference: the last
       ``WINDOW`` (100) losses that passed this test. Out-of-bounds losses never
       enter the reference, so a run stuck at a high loss does not become the
       norm. Otherwise the checkpoint is skipped with a warning, and training
       goes on: the next one is written if the losses are back in bounds.

    The losses are those of the main process (Detectron2 reduces them there),
    the only one that writes checkpoints.
    """

    LOSS_FACTOR = 10.0
    WINDOW = 100

    def before_train(self):
        super().before_train()
        self._reference = deque(maxlen=self.WINDOW)
        self._spike = None  # (iteration, loss, bound) of the first loss out of bounds since the last checkpoint

    def _check_loss(self, iteration: int) -> None:
        history = get_event_storage().histories().get("total_loss")
        if history is None or history.values()[-1][1] != iteration:
            return  # not the main process, or no loss logged at this iteration
        loss = history.values()[-1][0]
        bound = self.LOSS_FACTOR * statistics.median(self._reference) if self._reference else float("inf")
        if loss <= bound:
            self._reference.append(loss)
        elif self._spike is None:
            self._spike = (iteration, loss, bound)

    def after_step(self):
        iteration = self.trainer.iter
        self._check_loss(iteration)
        if not ((iteration + 1) % self.period == 0 or iteration >= self.max_iter - 1):
            return
        bad = [name for name, p in self.trainer.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(f"parameters became non-finite at iteration {iteration} "
                                     f"({len(bad)} tensors, e.g. {bad[:3]})")
        if self._spike is not None:
            at, loss, bound = self._spike
            logger.warning(f"no checkpoint at iteration {iteration}: total_loss reached {loss:.4g} at iteration "
                           f"{at}, above {self.LOSS_FACTOR:g} x the median of the previous losses ({bound:.4g}); "
                           "the weights may be damaged. The last good checkpoint stays "
                           f"{self.checkpointer.get_checkpoint_file() or 'none'}")
        else:
            super().after_step()
        self._spike = None


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
        return [IterationSeeds(self.cfg.SEED)] + [
            FiniteCheckpointer(h.checkpointer, h.period, h.max_iter, h.max_to_keep)
            if isinstance(h, hooks.PeriodicCheckpointer) else h
            for h in super().build_hooks()]

    def build_writers(self):
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
        (Detectron2 returns them only when TEST.EXPECTED_RESULTS is set)."""
        try:
            super().train()
            return getattr(self, "_last_eval_results", None)
        except FloatingPointError as e:
            lr = self.cfg.SOLVER.BASE_LR / 2
            last = (self.checkpointer.get_checkpoint_file()
                    if self.checkpointer.has_checkpoint() else None)
            where = (f"the last good checkpoint is {last}; continue from it (--resume)"
                     if last else "no good checkpoint was written; start again")
            clip = "" if self.cfg.SOLVER.CLIP_GRADIENTS.ENABLED else " (or with SOLVER.CLIP_GRADIENTS.ENABLED True)"
            raise TrainingDivergedError(f"training diverged at iteration {self.iter}: {e}\n{where} with half "
                                        f"the learning rate, SOLVER.BASE_LR {lr:g}{clip}", lr) from e

    @classmethod
    def build_train_loader(cls, cfg):
        """Training batches that are a function of (SEED, iteration) (exact resume,
        :mod:`sact_det.data.sampling`) for ``DATALOADER.SAMPLER_TRAIN``
        TrainingSampler; Detectron2's loader for its other samplers."""
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
            comm.get_rank(), world_size, cfg.DATALOADER.ASPECT_RATIO_GROUPING, cfg.DATASETS.TRAIN)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=ReportingDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([
            # The official pycocotools protocol; Detectron2's faster C++ version
            # needs its compiled ops, which sact-det does not require.
            COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=has_compiled_ops()),
            SACTEvaluator(dataset_name, output_dir=output_folder),
        ])


def build_config(args):
    """The frozen config of ``--config-file`` and the overrides, on the CPU when
    no CUDA device is present."""
    cfg = get_sact_cfg(args.config_file, args.opts)
    if fall_back_to_cpu(cfg) and comm.is_main_process():
        print("No CUDA device: running on the CPU (MODEL.DEVICE cpu)")
    cfg.freeze()
    return cfg


def _prepare(cfg, args):
    """Detectron2's default set-up (output dir, logging, seed) and the datasets
    checked before anything runs (and checked again when they are loaded)."""
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sact_det")
    names = set(cfg.DATASETS.TEST) | (set() if args.eval_only else set(cfg.DATASETS.TRAIN))
    if names & set(SYNTHETIC_SPLITS):
        if comm.get_local_rank() == 0:
            ensure_synthetic()  # generated on first use (said where), then reused
        comm.synchronize()
        register_synthetic()
    register_config_datasets(cfg)
    check_datasets_exist(sorted(names))
    validate_on_load(sorted(names))  # Detectron2's own COCO datasets; sact-det's are checked when registered


def setup(args):
    """Config from ``--config-file`` and overrides, Detectron2's default set-up
    (output dir, logging, seed), and datasets checked before anything runs."""
    cfg = build_config(args)
    _prepare(cfg, args)
    return cfg


def _resume_command(args, lr: float) -> str:
    """The command that continues ``args``'s run with ``--resume`` and ``SOLVER.BASE_LR lr``
    (``--resume`` goes before the KEY VALUE overrides, which end the command line)."""
    argv = ["--config-file", args.config_file]
    if args.num_gpus != 1:
        argv += ["--num-gpus", str(args.num_gpus)]
    if args.num_machines != 1:
        argv += ["--num-machines", str(args.num_machines), "--machine-rank", str(args.machine_rank),
                 "--dist-url", args.dist_url]
    opts = list(args.opts)
    kept = [x for key, value in zip(opts[::2], opts[1::2]) if key != "SOLVER.BASE_LR" for x in (key, value)]
    script = sys.argv[0] if sys.argv[0].endswith("train_net.py") else "tools/train_net.py"
    command = ["python", script, *argv, "--resume", *kept, "SOLVER.BASE_LR", f"{lr:g}"]
    return " ".join(shlex.quote(a) for a in command)


def main(args):
    """Evaluates (``--eval-only``) or trains; a training run holds the lock of its
    OUTPUT_DIR (:class:`~sact_det.runs.OutputDirLock`) from before it writes there."""
    cfg = build_config(args)
    training = not args.eval_only
    with OutputDirLock(cfg.OUTPUT_DIR) if training and comm.is_main_process() else contextlib.nullcontext():
        _prepare(cfg, args)
        if not training:
            model = SACTTrainer.build_model(cfg)
            if not cfg.MODEL.WEIGHTS:
                logger.warning("--eval-only without MODEL.WEIGHTS evaluates an untrained model")
            SACTCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            results = SACTTrainer.test(cfg, model)
            if comm.is_main_process():
                verify_results(cfg, results)
            return results
        trainer = SACTTrainer(cfg)
        trainer.resume_or_load(resume=args.resume, lr_from_config="SOLVER.BASE_LR" in args.opts[::2])
        try:
            return trainer.train()
        except TrainingDivergedError as e:
            raise TrainingDivergedError(f"{e}:\n  {_resume_command(args, e.suggested_lr)}",
                                        e.suggested_lr) from e.__cause__


def argument_parser() -> ToolParser:
    """Detectron2's ``tools/train_net.py`` arguments (``--config-file``,
    ``--eval-only``, ``--resume``, ``--num-gpus``, ..., ``KEY VALUE`` overrides),
    with one-line errors."""
    detectron2_parser = default_argument_parser()
    return ToolParser(detectron2_parser.description, epilog=detectron2_parser.epilog,
                      parents=[detectron2_parser], add_help=False)


def _launched_main(args, launcher_pid: int):
    """:func:`main` as ``launch`` runs it. In a worker process (``--num-gpus`` > 1)
    it ends with the launcher, and bad input is printed here as one line
    (:func:`~sact_det.tools_common.run_tool`; an exception would reach the
    launcher inside the worker's traceback) and ends the worker with
    ``INPUT_ERROR_STATUS``."""
    if os.getpid() == launcher_pid:
        return main(args)
    exit_with_parent(launcher_pid)

    def run():
        main(args)  # launch does not pass results back from workers
    status = run_tool(run)
    if status:
        sys.exit(status)


def launch_main(args):
    """:func:`main` in ``args.num_gpus`` processes per machine (Detectron2's ``launch``)."""
    return launch(_launched_main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args, os.getpid()))


def _launch_and_wait(args) -> int:
    try:
        launch_main(args)
    except ProcessExitedException as e:
        if e.exit_code == INPUT_ERROR_STATUS:  # the worker printed its error line
            return INPUT_ERROR_STATUS
        raise
    return 0


def command_line(argv=None):
    """``tools/train_net.py``, the whole program: the arguments and the config
    are checked before any process starts; bad input (a file, key, checkpoint,
    a diverged run) ends with one ``error: ...`` line and exit status 2 instead
    of a traceback. Ends the process (``SystemExit``) with the run's status."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    load_config(args.config_file, args.opts, parser)
    sys.exit(run_tool(lambda: _launch_and_wait(args), parser.prog))
