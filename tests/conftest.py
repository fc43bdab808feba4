"""Shared fixtures: configs of the tiny CPU models, a small synthetic dataset on
disk, the sact_det log, the tools as modules, and a hook that interrupts training."""
import importlib.util
import logging
import os

import pytest
import torch

from detectron2.engine import HookBase

from sact_det import get_sact_cfg
from sact_det.data import register_synthetic
from sact_det.data.classification import register_synthetic_cls
from sact_det.data.synthetic import generate_dataset
from sact_det.data.synthetic_cls import generate_classification_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

torch.set_num_threads(min(2, torch.get_num_threads()))


class StopAfter(HookBase):
    """Simulates a training run killed after ``iteration`` finished."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt


def config_path(name: str) -> str:
    return os.path.join(CONFIGS, name)


def tiny_cfg(*opts, config: str = "synthetic/sact_tiny.yaml"):
    """The synthetic CPU config with test-sized images and proposal counts."""
    test_opts = [
        "MODEL.DEVICE", "cpu",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    ]
    return get_sact_cfg(config_path(config), test_opts + list(opts))


def tiny_cls_cfg(*opts, config: str = "synthetic/cls_sact_tiny.yaml"):
    """The synthetic classifier config with test-sized images and batches."""
    test_opts = [
        "MODEL.DEVICE", "cpu", "INPUT.CLS.TRAIN_SIZE", "48", "INPUT.CLS.TEST_RESIZE", "55",
        "INPUT.CLS.TEST_SIZE", "48", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "4",
        "TEST.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0",
    ]
    return get_sact_cfg(config_path(config), test_opts + list(opts))


@pytest.fixture(scope="session")
def synthetic_cls_root(synthetic_root):
    """16 training, 8 validation and 4 held-out images of the synthetic
    classification set beside ``synthetic_root``, registered as synthetic_cls_*."""
    root = os.path.join(os.path.dirname(synthetic_root), "synthetic_cls")
    generate_classification_dataset(root, num_train=16, num_val=8, num_heldout=4, seed=0,
                                    size_range=((48, 64), (56, 72)))
    register_synthetic_cls(root)
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """12 training and 4 validation images, registered as synthetic_train/val and
    found by every command through ``$DETECTRON2_DATASETS/synthetic_coco``."""
    datasets = tmp_path_factory.mktemp("datasets")
    os.environ["DETECTRON2_DATASETS"] = str(datasets)
    root = str(datasets / "synthetic_coco")
    generate_dataset(root, num_train=12, num_val=4, seed=0,
                     size_range=((120, 160), (150, 200)), max_objects=3)
    register_synthetic(root)
    return root


def load_tool(name: str):
    """A script of ``tools/`` as a module (``name`` relative to tools/, without
    .py), so that tests call its ``main(argv)`` in-process."""
    path = os.path.join(REPO, "tools", name + ".py")
    spec = importlib.util.spec_from_file_location("tool_" + name.replace("/", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_logging_into_closed_captures():
    """Removes, after each test, the log handlers that write to a stream the test
    closed: Detectron2's ``setup_logger`` binds a handler to the ``sys.stdout``
    of the moment, which is a test's capture (``capsys``); later records would
    go there and logging would print "--- Logging error ---" tracebacks into
    the stderr of later tests."""
    yield
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)


@pytest.fixture
def sact_log(caplog):
    """``caplog`` recording the sact_det logger at INFO and above, whether or not
    Detectron2's ``setup_logger`` has stopped it from propagating to the root."""
    logger = logging.getLogger("sact_det")
    propagate, level = logger.propagate, logger.level
    logger.propagate = False  # recorded once, by the handler below
    logger.setLevel(logging.INFO)
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate
    logger.setLevel(level)
