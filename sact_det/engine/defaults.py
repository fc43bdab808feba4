"""Configs and set-up for every entry point: :func:`load_config` (a tool's
config, checked before any work), :func:`build_config` and :func:`setup`
(``tools/train_net.py``'s, with Detectron2's default set-up and the datasets
checked before anything runs)."""
import argparse
import os
from typing import Sequence

import detectron2.utils.comm as comm
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger

from sact_det.config import fall_back_to_cpu, get_sact_cfg
from sact_det.data import (SYNTHETIC_CLS_SPLITS, SYNTHETIC_SPLITS, check_datasets_exist, check_num_classes,
                           ensure_synthetic, ensure_synthetic_cls, register_classification_datasets,
                           register_config_datasets, register_synthetic)
from sact_det.data.annotations import validate_on_load
from sact_det.utils.cli import error_message
from sact_det.utils.errors import InputFileNotFoundError, InputValueError

__all__ = ["load_config", "build_config", "setup"]


def load_config(config_file: str, opts: Sequence[str] = (), parser: argparse.ArgumentParser = None):
    """The SACT config of a tool: file + overrides, on the CPU when CUDA is
    absent, with the datasets of ``DATASETS.COCO_JSON`` registered; a local
    ``MODEL.WEIGHTS`` file that does not exist is an error before anything is built.

    A missing file, an unknown key or an invalid value raises an error that
    names it; with ``parser``, it is that parser's argument error instead (one
    line, exit status 2), for tools that check everything before any work.
    """
    try:
        cfg = get_sact_cfg(config_file, list(opts))
        weights = cfg.MODEL.WEIGHTS
        if weights and "://" not in weights and not os.path.isfile(weights):
            if os.path.isdir(weights):
                raise InputValueError(f"MODEL.WEIGHTS: expected a checkpoint file, {weights!r} is a directory")
            raise InputFileNotFoundError(f"MODEL.WEIGHTS: expected a checkpoint file, {weights!r} does not exist")
        fall_back_to_cpu(cfg)
        register_config_datasets(cfg)
        register_classification_datasets(cfg)
    except (KeyError, ValueError, FileNotFoundError) as e:  # the messages name the key or file
        if parser is None:
            raise
        parser.error(error_message(e))
    return cfg


def build_config(args):
    """The frozen config of ``--config-file`` and the overrides, on the CPU when
    no CUDA device is present."""
    cfg = get_sact_cfg(args.config_file, args.opts)
    if fall_back_to_cpu(cfg) and comm.is_main_process():
        print("No CUDA device: running on the CPU (MODEL.DEVICE cpu)")
    cfg.freeze()
    return cfg


def _prepare(cfg, args):
    """The datasets' class counts checked against the config, Detectron2's
    default set-up (output dir, logging, seed), and the datasets checked before
    anything runs (and checked again when they are loaded)."""
    names = set(cfg.DATASETS.TEST) | (set() if args.eval_only else set(cfg.DATASETS.TRAIN))
    register_config_datasets(cfg)
    if cfg.MODEL.META_ARCHITECTURE != "SACTClassifier":  # a classifier's classes are its folders
        check_num_classes(cfg.MODEL.ROI_HEADS.NUM_CLASSES, sorted(names))  # before anything is written
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sact_det")
    if names & set(SYNTHETIC_SPLITS):
        if comm.get_local_rank() == 0:
            ensure_synthetic(names=names)  # generated on first use (said where), then reused
        comm.synchronize()
        register_synthetic()
    register_classification_datasets(cfg)
    if names & set(SYNTHETIC_CLS_SPLITS):
        if comm.get_local_rank() == 0:
            ensure_synthetic_cls()
        comm.synchronize()
        register_classification_datasets(cfg)
    check_datasets_exist(sorted(names))
    validate_on_load(sorted(names))  # Detectron2's own COCO datasets; sact-det's are checked when registered


def setup(args):
    """Config from ``--config-file`` and overrides, Detectron2's default set-up
    (output dir, logging, seed), and datasets checked before anything runs."""
    cfg = build_config(args)
    _prepare(cfg, args)
    return cfg
