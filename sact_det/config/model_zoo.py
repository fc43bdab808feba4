"""What ships inside the package, found the same way in a source checkout and
after ``pip install .``, as Detectron2's ``model_zoo`` does:

* configs (``sact_det/configs``; the repository's ``configs/`` links to them),
  :func:`get_config_file`;
* weights (``sact_det/weights``): small checkpoints trained by this project on
  its synthetic data, named in configs and on command lines as
  ``sact_det://<file>`` (``MODEL.WEIGHTS sact_det://synthetic_cls_sact_tiny.pth``),
  :func:`get_weights_file`.
"""
import os

from iopath.common.file_io import PathHandler

from detectron2.utils.file_io import PathManager

__all__ = ["CONFIG_ROOT", "WEIGHTS_ROOT", "WEIGHTS_PREFIX", "get_config_file", "get_weights_file"]

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ROOT = os.path.join(PACKAGE_ROOT, "configs")
WEIGHTS_ROOT = os.path.join(PACKAGE_ROOT, "weights")
WEIGHTS_PREFIX = "sact_det://"


def _shipped(root: str, extension: str) -> str:
    return ", ".join(sorted(os.path.relpath(os.path.join(d, f), root)
                            for d, _, files in os.walk(root) for f in files if f.endswith(extension)))


def get_config_file(name: str) -> str:
    """The path of a shipped config, e.g. ``get_config_file("synthetic/sact_tiny.yaml")``."""
    path = os.path.join(CONFIG_ROOT, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no shipped config {name!r}; the package has {_shipped(CONFIG_ROOT, '.yaml')}")
    return path


def get_weights_file(name: str) -> str:
    """The path of shipped weights, ``name`` with or without ``sact_det://``."""
    name = name[len(WEIGHTS_PREFIX):] if name.startswith(WEIGHTS_PREFIX) else name
    path = os.path.join(WEIGHTS_ROOT, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no shipped weights {name!r}; the package has "
                                f"{_shipped(WEIGHTS_ROOT, '.pth') or 'none'}")
    return path


class _ShippedWeightsHandler(PathHandler):
    """``sact_det://<file>`` -> the file in ``sact_det/weights`` (read only)."""

    def _get_supported_prefixes(self):
        return [WEIGHTS_PREFIX]

    def _get_local_path(self, path: str, **kwargs) -> str:
        return get_weights_file(path)

    def _isfile(self, path: str, **kwargs) -> bool:
        return os.path.isfile(os.path.join(WEIGHTS_ROOT, path[len(WEIGHTS_PREFIX):]))

    def _open(self, path: str, mode: str = "r", **kwargs):
        if any(c in mode for c in "wax+"):
            raise ValueError(f"{path}: shipped weights are read only")
        return open(get_weights_file(path), mode)


PathManager.register_handler(_ShippedWeightsHandler())
