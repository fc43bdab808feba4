"""Messages that PyTorch and Detectron2 print on every run and that a user
cannot act on, silenced by message (nothing else of their loggers or warnings).

* torch's ``torch.meshgrid: in an upcoming release ...`` UserWarning, from
  Detectron2's anchor generator at the first inference;
* torch.fx's ``is_fx_tracing will return true ...`` notice (a log record of
  ``torch.fx._symbolic_trace``), from Detectron2's ROI pooler at the first inference;
* the Kineto profiler's C++ log lines (``USDT ... profiler_start``,
  ``ERROR ... gpuGetDeviceCount failed with code 35`` on a CUDA build without a
  GPU), printed whenever torch's profiler runs. They are written by C++ to
  stderr; Kineto reads its level from ``KINETO_LOG_LEVEL`` when the profiler
  first starts in a process, so :func:`quiet_profiler_logs` sets it (unless the
  user did) where sact-det starts the profiler (the benchmark's memory
  measurement and ``--profile``);
* TensorFlow's start-up lines (``All log messages before absl::InitializeLog()``,
  ``oneDNN custom operations are on``, the CPU-instructions notice) where
  TensorFlow is installed (the ``tf`` extra, for the authors' checkpoints): the
  TensorBoard writer of every training imports it. TensorFlow reads
  ``TF_CPP_MIN_LOG_LEVEL`` and ``TF_ENABLE_ONEDNN_OPTS`` when imported, so
  :func:`quiet_tensorflow_logs` sets them (unless the user did) before the
  trainer builds its writers; TensorBoard only writes events with it.

:func:`known_noise_silenced` scopes the first two to a block (``SACTPredictor``);
:func:`silence_known_noise` installs them for the rest of the process (the
command-line entry points).
"""
import logging
import os
import warnings
from contextlib import contextmanager

__all__ = ["known_noise_silenced", "silence_known_noise", "quiet_profiler_logs", "quiet_tensorflow_logs",
           "KINETO_QUIET_LEVEL"]

MESHGRID_WARNING = r"torch\.meshgrid: in an upcoming release"
FX_TRACING_LOGGER = "torch.fx._symbolic_trace"
FX_TRACING_NOTICE = "is_fx_tracing will return true"
# Kineto's levels: VERBOSE 0, INFO 1, WARNING 2, STAGE 3, ERROR 4, USDT 5; 6 prints none of them.
KINETO_QUIET_LEVEL = "6"


class _FxTracingNotice(logging.Filter):
    """Drops the ``is_fx_tracing`` notice only; the logger's other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(FX_TRACING_NOTICE)


_FX_FILTER = _FxTracingNotice()  # one instance: adding it twice is a no-op


def _ignore_meshgrid_warning() -> None:
    warnings.filterwarnings("ignore", message=MESHGRID_WARNING, category=UserWarning)


@contextmanager
def known_noise_silenced():
    """The meshgrid warning and the ``is_fx_tracing`` notice silenced inside the block only."""
    logger = logging.getLogger(FX_TRACING_LOGGER)
    added = _FX_FILTER not in logger.filters
    with warnings.catch_warnings():
        _ignore_meshgrid_warning()
        logger.addFilter(_FX_FILTER)
        try:
            yield
        finally:
            if added:
                logger.removeFilter(_FX_FILTER)


def silence_known_noise() -> None:
    """The meshgrid warning and the ``is_fx_tracing`` notice silenced for the
    rest of the process: for the command-line entry points."""
    _ignore_meshgrid_warning()
    logging.getLogger(FX_TRACING_LOGGER).addFilter(_FX_FILTER)


def quiet_profiler_logs() -> None:
    """Kineto's log lines off (``KINETO_LOG_LEVEL``), unless the user set a level.
    Takes effect if called before torch's profiler first starts in the process."""
    os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_QUIET_LEVEL)


def quiet_tensorflow_logs() -> None:
    """TensorFlow's start-up lines off, unless the user set these variables.
    Takes effect if called before TensorFlow is first imported in the process.
    The oneDNN line can only be removed with the option it names (TensorFlow
    2.21 prints it at any ``TF_CPP_MIN_LOG_LEVEL``); TensorBoard's event writing
    does no arithmetic with it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # errors only
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
