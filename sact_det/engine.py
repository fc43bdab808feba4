"""Training and evaluation in Detectron2's style (``tools/train_net.py`` calls this).

``SACTTrainer`` is Detectron2's ``DefaultTrainer`` with what a SACT run needs:
the COCO evaluator plus the SACT FLOPs/ponder evaluator, a console line with
each block's ponder cost and units every logging period, a checkpointer that
names the keys of a checkpoint that does not fit, periodic checkpoints that are
only written while the weights are finite (a diverging run stops with the last
good checkpoint intact), images that cannot be read reported by name, and
multi-process training on CPUs as well as GPUs.
"""
import logging
import os
import weakref

import torch

import detectron2.utils.comm as comm
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (AMPTrainer, DefaultTrainer, SimpleTrainer, default_argument_parser,
                               default_setup, hooks, launch)
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, verify_results
from detectron2.utils.events import EventWriter, get_event_storage
from detectron2.utils.logger import setup_logger

from .checkpoint import SACTCheckpointer
from .config import fall_back_to_cpu, get_sact_cfg
from .data import (SYNTHETIC_SPLITS, check_datasets_exist, ensure_synthetic, register_config_datasets,
                   register_synthetic)
from .evaluation import SACTEvaluator

__all__ = ["SACTTrainer", "TrainingDivergedError", "setup", "main", "argument_parser", "launch_main"]

logger = logging.getLogger("sact_det")


class TrainingDivergedError(RuntimeError):
    pass


def has_compiled_ops() -> bool:
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


class ReportingDatasetMapper(DatasetMapper):
    """Detectron2's mapper; an image that cannot be read is named. In training
    it is skipped with a warning (Detectron2 then samples another image); in
    evaluation it is an error, since skipping would change the metric."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except OSError as e:  # missing, truncated or not an image (PIL raises OSError)
            message = f"could not read image {dataset_dict.get('file_name')!r}: {e}"
            if self.is_train:
                logger.warning(message + "; skipping it")
                return None
            raise OSError(message) from e


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
    """Detectron2's periodic checkpointer that refuses to save non-finite weights."""

    def after_step(self):
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0 or iteration >= self.max_iter - 1:
            bad = [name for name, p in self.trainer.model.named_parameters()
                   if not torch.isfinite(p).all()]
            if bad:
                raise FloatingPointError(f"parameters became non-finite at iteration {iteration} "
                                         f"({len(bad)} tensors, e.g. {bad[:3]})")
        super().after_step()


class SACTTrainer(DefaultTrainer):
    """``DefaultTrainer`` for SACT detectors; see the module docstring."""

    def __init__(self, cfg):
        super(DefaultTrainer, self).__init__()  # TrainerBase: DefaultTrainer's own set-up follows
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
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
        return [FiniteCheckpointer(h.checkpointer, h.period, h.max_iter, h.max_to_keep)
                if isinstance(h, hooks.PeriodicCheckpointer) else h
                for h in super().build_hooks()]

    def build_writers(self):
        return super().build_writers() + [SACTMetricPrinter()]

    def train(self):
        """Trains; returns the results of the evaluation at the end of training
        (Detectron2 returns them only when TEST.EXPECTED_RESULTS is set)."""
        try:
            super().train()
            return getattr(self, "_last_eval_results", None)
        except FloatingPointError as e:
            last = (self.checkpointer.get_checkpoint_file()
                    if self.checkpointer.has_checkpoint() else None)
            where = (f"the last good checkpoint is {last}; continue from it with --resume "
                     if last else "no checkpoint was written yet; ")
            raise TrainingDivergedError(
                f"training diverged at iteration {self.iter}: {e}\n{where}after lowering "
                "SOLVER.BASE_LR or enabling SOLVER.CLIP_GRADIENTS") from e

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=ReportingDatasetMapper(cfg, True))

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


def setup(args):
    """Config from ``--config-file`` and overrides, Detectron2's default set-up
    (output dir, logging, seed), and datasets checked before anything runs."""
    cfg = get_sact_cfg(args.config_file, args.opts)
    if fall_back_to_cpu(cfg) and comm.is_main_process():
        print("No CUDA device: running on the CPU (MODEL.DEVICE cpu)")
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sact_det")
    names = set(cfg.DATASETS.TEST) | (set() if args.eval_only else set(cfg.DATASETS.TRAIN))
    if names & set(SYNTHETIC_SPLITS):
        if comm.get_local_rank() == 0:
            ensure_synthetic()  # generated on first use (seconds), then reused
        comm.synchronize()
        register_synthetic()
    register_config_datasets(cfg)
    check_datasets_exist(sorted(names))
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = SACTTrainer.build_model(cfg)
        if not cfg.MODEL.WEIGHTS:
            logger.warning("--eval-only without MODEL.WEIGHTS evaluates an untrained model")
        SACTCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = SACTTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = SACTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    """Detectron2's ``tools/train_net.py`` arguments (``--config-file``,
    ``--eval-only``, ``--resume``, ``--num-gpus``, ..., ``KEY VALUE`` overrides)."""
    return default_argument_parser()


def launch_main(args):
    """:func:`main` in ``args.num_gpus`` processes per machine (Detectron2's ``launch``)."""
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))
