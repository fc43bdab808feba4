"""What the installed environment offers."""

__all__ = ["has_compiled_ops"]


def has_compiled_ops() -> bool:
    """Whether Detectron2's compiled ops (``detectron2._C``) are installed; sact-det never needs them."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True
