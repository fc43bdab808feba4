"""The configs shipped inside the package (``sact_det/configs``; the
repository's ``configs/`` links to them), found the same way in a source
checkout and after ``pip install .``, as Detectron2's ``model_zoo`` does."""
import os

__all__ = ["CONFIG_ROOT", "get_config_file"]

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def get_config_file(name: str) -> str:
    """The path of a shipped config, e.g. ``get_config_file("synthetic/sact_tiny.yaml")``."""
    path = os.path.join(CONFIG_ROOT, name)
    if not os.path.isfile(path):
        shipped = sorted(os.path.relpath(os.path.join(d, f), CONFIG_ROOT)
                         for d, _, files in os.walk(CONFIG_ROOT) for f in files if f.endswith(".yaml"))
        raise FileNotFoundError(f"no shipped config {name!r}; the package has {', '.join(shipped)}")
    return path
