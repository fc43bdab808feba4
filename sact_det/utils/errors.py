"""The errors of sact-det. An :class:`InputError` is a problem with what the
user gave (a file, a config key, an argument, a checkpoint), explained by its
message; its subclasses also derive from the built-in exception a caller would
expect (``FileNotFoundError``, ``ValueError``, ...), so ``except ValueError``
keeps working. The tools end on one with one line and :data:`INPUT_ERROR_STATUS`."""

__all__ = ["INPUT_ERROR_STATUS", "InputError", "InputFileNotFoundError", "InputKeyError", "InputValueError",
           "ImageReadError", "OutputWriteError", "NonFiniteOutputError"]

# Exit status of a tool ended by bad input (argparse's).
INPUT_ERROR_STATUS = 2


class InputError(Exception):
    """A problem with the user's input, explained by its message."""

    def __str__(self):
        # KeyError would quote the message; an explanation reads better bare.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputFileNotFoundError(InputError, FileNotFoundError):
    pass


class InputKeyError(InputError, KeyError):
    pass


class InputValueError(InputError, ValueError):
    pass


class ImageReadError(InputError, OSError):
    """An image file that is missing, truncated or not an image; the message names it."""


class OutputWriteError(InputError, OSError):
    """An output that cannot be written (no space left, not a directory, not
    writable, a symbolic link the run did not make); the message names it."""


class NonFiniteOutputError(InputError, FloatingPointError):
    """The model produced NaN or infinity at inference: its weights are broken.
    The message names the block or head where it first happened."""
